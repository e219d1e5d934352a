"""Two operator replicas against the real API server: only the Lease holder acts, and the other
takes over when it dies (SIGKILL: after the lease duration) or stops (SIGTERM: it releases).

The replicas run as the chart's ServiceAccount installed with ``replicaCount=2``, so the chart's
Lease role is proved enough. Timings are short (lease 4 s, renew deadline 3 s, retry 0.5 s); the
stated bounds follow from them: takeover after a crash within lease duration + 2 retry periods,
after a clean stop within 2 retry periods (+ slack for a loaded machine). Measured figures are
printed and quoted in docs/operator.md.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_operator_k8s import (
    OperatorProcess,
    cli,
    events_of,
    get,
    install_chart_rbac,
    install_crds,
    observed,
    policies_path,
    policy_manifest,
    until,
)
from tierguard.localenv.kube import KubeCluster

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s]

NS = "leader"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/tg-tierguard"
DURATION, RENEW, RETRY = 4.0, 3.0, 0.5
SLACK = 2.0  # process start-up and a loaded CI machine
TIMING_ARGS = ("--leader-elect", "--lease-name", "tg-tierguard", "--lease-namespace", NS,
               "--lease-duration", str(DURATION), "--renew-deadline", str(RENEW), "--retry-period", str(RETRY))  # fmt: skip


def holder(cluster: KubeCluster) -> str | None:
    lease = get(cluster, LEASE)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def replica(kubeconfig: Path, log_dir: Path, name: str) -> OperatorProcess:
    return OperatorProcess(
        kubeconfig, NS, log_dir, extra_args=(*TIMING_ARGS, "--identity", name), label=f"-{name}"
    )


@pytest.fixture(scope="module")
def cluster(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KubeCluster, Path, Path]]:
    from test_operator_k8s import (
        crds,  # noqa: F401 (the fixture's function, called below)
    )

    install_crds(kube_cluster)
    kubeconfig = install_chart_rbac(kube_cluster, NS, "replicaCount=2")
    yield kube_cluster, kubeconfig, tmp_path_factory.mktemp("replicas")


def create(cluster: KubeCluster, name: str) -> dict[str, Any]:
    return dict(cluster.create(policies_path(NS), policy_manifest(name, NS)))


def test_one_leader_acts_and_the_other_takes_over(cluster: tuple[KubeCluster, Path, Path]) -> None:
    kube, kubeconfig, logs = cluster
    a = replica(kubeconfig, logs, "op-a").start()
    b: OperatorProcess | None = None
    try:
        until(lambda: holder(kube) == "op-a", 20, "op-a to hold the Lease", a.tail)
        b = replica(kubeconfig, logs, "op-b").start()  # live (its liveness answers) while it waits
        until(lambda: "waits for the Lease" in b.log(), 20, "op-b to wait", b.tail)

        # only the leader acts: one status writer, one NewRevision Event
        obj = create(kube, "one")
        until(lambda: observed(kube, NS, "one"), 30, "'one' observed", a.tail)
        time.sleep(2 * RETRY + 1)  # room for a second actor to show itself
        reasons = [e["reason"] for e in events_of(kube, NS, obj["metadata"]["uid"])]
        assert reasons.count("NewRevision") == 1, reasons
        assert holder(kube) == "op-a"
        assert "leads" not in b.log() and "operator watching" not in b.log()

        # the leader dies without a word: b takes over once the Lease has gone unrenewed
        assert a.proc is not None and a.proc.proc is not None
        t0 = time.monotonic()
        a.proc.proc.send_signal(signal.SIGKILL)
        until(
            lambda: holder(kube) == "op-b", DURATION + 2 * RETRY + SLACK + 5, "op-b to take the Lease", b.tail
        )
        took_over = time.monotonic() - t0
        create(kube, "two")
        until(lambda: observed(kube, NS, "two"), 30, "'two' observed by the new leader", b.tail)
        acting = time.monotonic() - t0
        print(f"\nafter SIGKILL of the leader: Lease taken in {took_over:.1f} s, a new policy reconciled "
              f"{acting:.1f} s after the kill (lease duration {DURATION:g} s, retry {RETRY:g} s)")  # fmt: skip
        assert took_over <= DURATION + 2 * RETRY + SLACK, took_over
        lease = get(kube, LEASE)["spec"]
        assert lease["leaseTransitions"] == 1

        # a clean stop releases the Lease: the waiting replica leads within a couple of retries
        a = replica(kubeconfig, logs, "op-a").start()
        until(lambda: "waits for the Lease" in a.log(), 20, "op-a to wait again", a.tail)
        t1 = time.monotonic()
        b.stop()
        until(
            lambda: holder(kube) == "op-a", 2 * RETRY + SLACK + 5, "op-a to take the released Lease", a.tail
        )
        handover = time.monotonic() - t1
        print(f"after SIGTERM of the leader: Lease taken in {handover:.1f} s (including its shutdown)")
        assert handover <= 2 * RETRY + SLACK, handover
        assert "released the Lease" in b.log()
        create(kube, "three")
        until(lambda: observed(kube, NS, "three"), 30, "'three' observed", a.tail)
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_without_leader_election_both_replicas_act(cluster: tuple[KubeCluster, Path, Path]) -> None:
    """What leader election prevents (docs/operator.md, Limits): two replicas started without it
    both reconcile every policy — both read it every tick and both apply its children, and the
    loser of a status-write race gets a 409 and reads again. The conditional writes keep the
    rollout right: one Event per transition, a manual promote applied once."""
    kube, kubeconfig, logs = cluster
    a = OperatorProcess(kubeconfig, NS, logs, label="-plain-a").start()
    b = OperatorProcess(kubeconfig, NS, logs, label="-plain-b").start()
    try:
        obj = create(kube, "both")
        until(lambda: observed(kube, NS, "both"), 30, "'both' observed", a.tail)
        apply = f'"PATCH /api/v1/namespaces/{NS}/configmaps/both-proxy?'
        until(lambda: apply in a.log() and apply in b.log(), 20, "both replicas to apply the ConfigMap", b.tail)
        res = cli("promote", "both", "-n", NS, "--wait", "30", kubeconfig=kube.kubeconfig)
        assert res.returncode == 0, res.stderr
        time.sleep(3)  # room for the other replica to apply it a second time
        st = get(kube, policies_path(NS, "both"))["status"]
        assert st["canaryWeight"] == 10 and st["currentStep"] == 1, st
        reasons = [e["reason"] for e in events_of(kube, NS, obj["metadata"]["uid"])]
        assert reasons.count("NewRevision") == 1 and reasons.count("StepPromoted") == 1, reasons
        reads = [p.log().count(f'"GET {policies_path(NS, "both")} ') for p in (a, b)]
        conflicts = sum(p.log().count("both: conflict, reconciling again") for p in (a, b))
        assert min(reads) >= 3, reads
        print(f"\nwithout leader election: policy reads per replica {reads}, 409 conflicts {conflicts}, "
              f"Events {sorted(reasons)}")  # fmt: skip
    finally:
        a.stop()
        b.stop()
