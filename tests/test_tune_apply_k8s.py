"""`tierguard tune --apply` and `spec.autoTune` on a real kube-apiserver + etcd (RBAC on).

The operator runs as the chart's ServiceAccount (as in test_operator_k8s.py). `tierguard tune`
runs as a real process, as the ServiceAccount the operator rendered for the policy's autoTune
(its Role allows get/patch on that one policy), against real review stores full of labels:
a SQLite file, then PostgreSQL (Debian's server on loopback) with the CronJob's exact command
line. The operator then starts the tuned revision's rollout, paused for approval.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import needs
from test_operator_k8s import (
    REPO,
    OperatorProcess,
    _can,
    _token,
    config_of,
    events_of,
    get,
    install_chart_rbac,
    install_crds,
    merge_patch,
    policies_path,
    status_of,
    until,
)
from tierguard.cli import main as cli_main
from tierguard.kube import autotune
from tierguard.kube.client import KubeApi
from tierguard.localenv.kube import KubeCluster
from tierguard.policy import CascadePolicySpec, Revision
from tierguard.review.store import ShadowResult, open_store
from tierguard.rollout.approval import TUNED_ANNOTATION, TunedRecord

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s]

NS = "tune-apply"
NAME = "shop"


def policy(store: str) -> dict[str, Any]:
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "tiers": [
                {"name": "small", "baseUrl": "http://127.0.0.1:9101/v1", "model": "s",
                 "confidence": {"threshold": 0.6}},
                {"name": "big", "baseUrl": "http://127.0.0.1:9102/v1", "model": "b"},
            ],
            "rollout": {"interval": "1s", "minSamples": 10},
            "proxy": {"replicas": 1, "review": {"store": store}},
            "autoTune": {"interval": "1h", "approval": "manual", "maxAccuracyDrop": 0.01},
        },
    }  # fmt: skip


def fill(url: str, current: float, cliff: float) -> int:
    """Production comparisons of the small tier's answers with the big tier's (inclusion
    probability 1; shadow rows for answers the small tier gave at threshold ``current``,
    escalation rows for the others): at or above ``cliff`` the two always agree, below it never.
    So with epsilon 1 point tune certifies the threshold ``cliff`` and nothing lower."""
    store = open_store(url)
    rng = random.Random(3)
    rows = []
    for i in range(2000):
        c = (
            rng.uniform(cliff, 1.0)
            if i < 1000
            else rng.uniform(cliff - 0.05, cliff)
            if i < 1300
            else rng.uniform(0.3, cliff - 0.05)
        )
        answered = "small" if c >= current else "big"
        rows.append(
            ShadowResult(
                f"{cliff}-{i}",
                time.time(),
                NAME,
                "r1",
                "small",
                c >= cliff,
                0.0,
                c,
                c,
                1.0,
                "shadow" if answered == "small" else "escalation",
                answered,
            )
        )
    store.add_shadow(rows)
    store.close()
    return len(rows)


def tierguard(*args: str, kubeconfig: Path | None = None, env: dict[str, str] | None = None) -> Any:
    extra = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    full_env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "tierguard", *args, *extra],
        capture_output=True, text=True, env=full_env, timeout=120, check=False,
    )  # fmt: skip


class TuneEnv:
    def __init__(self, cluster: KubeCluster, operator: OperatorProcess, pg_url: str, tmp: Path) -> None:
        self.cluster, self.operator, self.pg_url, self.tmp = cluster, operator, pg_url, tmp

    def obj(self) -> dict[str, Any]:
        return dict(get(self.cluster, policies_path(NS, NAME)))

    def wait(self, pred: Any, what: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = status_of(self.cluster, NS, NAME)
            return st if st and pred(st) else None

        return until(
            check,
            timeout,
            what,
            lambda: json.dumps(status_of(self.cluster, NS, NAME))[:2000] + self.operator.tail(),
        )

    def tune_kubeconfig(self) -> Path:
        until(
            lambda: get(self.cluster, f"/api/v1/namespaces/{NS}/serviceaccounts/{NAME}-tune"),
            30,
            "the tune ServiceAccount",
            self.operator.tail,
        )
        return self.cluster.kubeconfig_for_service_account(NS, f"{NAME}-tune", create=False)


@pytest.fixture(scope="module")
def tenv(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuneEnv]:
    needs.postgres()
    from infra.postgres import PostgresServer

    install_crds(kube_cluster)
    kubeconfig = install_chart_rbac(kube_cluster, NS)
    with PostgresServer() as pg:
        url = pg.create_database("review")
        operator = OperatorProcess(kubeconfig, NS, tmp_path_factory.mktemp("operator")).start()
        try:
            yield TuneEnv(kube_cluster, operator, url, tmp_path_factory.mktemp("tune"))
        finally:
            operator.stop()


def _tuned_record(obj: dict[str, Any]) -> TunedRecord:
    record = TunedRecord.parse((obj["metadata"].get("annotations") or {}).get(TUNED_ANNOTATION))
    assert record is not None, obj["metadata"]
    return record


def _threshold(obj: dict[str, Any]) -> float:
    return float(obj["spec"]["tiers"][0]["confidence"]["threshold"])


def test_tune_apply_writes_a_revision_the_operator_holds_for_approval(tenv: TuneEnv) -> None:
    c = tenv.cluster
    c.create(policies_path(NS), policy(tenv.pg_url))
    tenv.wait(lambda s: s.get("canaryRevision"), "the first rollout")
    res = tierguard("promote", NAME, "-n", NS, "--full", "--wait", "30", kubeconfig=c.kubeconfig)
    assert res.returncode == 0, res.stderr
    st = tenv.wait(lambda s: s.get("phase") == "Succeeded", "the first revision stable")
    stable = st["stableRevision"]

    sqlite = f"sqlite:{tenv.tmp / 'review.db'}"
    rows = fill(sqlite, current=0.6, cliff=0.65)
    sa = tenv.tune_kubeconfig()  # tune runs as the policy's own tune ServiceAccount
    common = ("tune", "--store", sqlite, "--policy-ref", f"{NS}/{NAME}", "--max-accuracy-drop", "0.01")

    generation = tenv.obj()["metadata"]["generation"]
    res = tierguard(*common, "--dry-run", kubeconfig=sa)
    assert res.returncode == 0, res.stderr
    assert "-      threshold: 0.6\n" in res.stdout and "+      threshold: 0.65\n" in res.stdout, res.stdout
    assert "dry run: nothing applied" in res.stdout
    obj = tenv.obj()
    assert obj["metadata"]["generation"] == generation and _threshold(obj) == 0.6
    assert TUNED_ANNOTATION not in (obj["metadata"].get("annotations") or {})
    # the same through a manifest naming the policy (--policy FILE): the cluster's object is tuned
    manifest = tenv.tmp / "shop.yaml"
    manifest.write_text(json.dumps({"kind": "CascadePolicy", "metadata": {"name": NAME, "namespace": NS}}))
    res = tierguard("tune", "--store", sqlite, "--policy", str(manifest), "--dry-run", "--max-accuracy-drop",
                    "0.01", kubeconfig=sa)  # fmt: skip
    assert res.returncode == 0 and "+      threshold: 0.65\n" in res.stdout, res.stdout + res.stderr

    res = tierguard(*common, "--apply", kubeconfig=sa)
    assert res.returncode == 0, res.stderr
    assert "applied" in res.stdout and "approval manual" in res.stdout, res.stdout
    assert "evidence: 2000 comparisons" in res.stderr and "small: threshold 0.6 -> 0.65" in res.stderr
    obj = tenv.obj()
    assert _threshold(obj) == 0.65
    record = _tuned_record(obj)
    revision = Revision.of(CascadePolicySpec.model_validate(obj["spec"]).cascade()).name
    assert (record.revision, record.previous, record.rows, record.approval) == (
        revision,
        stable,
        rows,
        "manual",
    )
    guarantee = json.loads(obj["metadata"]["annotations"]["tierguard.io/guarantee"])
    assert guarantee["n"] == rows and guarantee["eps"] == 0.01
    assert [(ch.tier, ch.old, ch.new) for ch in record.changes] == [("small", 0.6, 0.65)]

    # the operator starts the rollout of the tuned revision, paused at its first step
    st = tenv.wait(lambda s: s.get("canaryRevision") == revision, "the tuned revision's rollout")
    assert (st["phase"], st["canaryWeight"], st["currentStep"], st["stableRevision"]) == (
        "Paused",
        5,
        0,
        stable,
    )
    config = config_of(c, NS, NAME)
    assert config is not None and config.canary is not None and config.canary_weight == 5
    assert config.canary.cascade.tiers[0].confidence.threshold == 0.65
    reasons = [e["reason"] for e in events_of(c, NS, obj["metadata"]["uid"])]
    assert "AwaitingApproval" in reasons and "NewRevision" in reasons
    res = tierguard("status", NAME, "-n", NS, kubeconfig=c.kubeconfig)  # what a person approves
    assert "phase:          Paused" in res.stdout, res.stdout
    assert f"revision {revision}" in res.stdout and "small 0.6 -> 0.65 (approval manual)" in res.stdout
    time.sleep(3)  # several analysis intervals: it stays where it is
    st = status_of(c, NS, NAME)
    assert (st["phase"], st["canaryWeight"]) == ("Paused", 5)

    # a rollout in progress: tune leaves it alone (no write, exit 0; the operator's status writes
    # move the resourceVersion, the generation and the annotation stay)
    before = tenv.obj()["metadata"]
    res = tierguard(*common, "--apply", kubeconfig=sa)
    assert res.returncode == 0 and "in progress" in res.stdout and "nothing applied" in res.stdout, res
    after = tenv.obj()["metadata"]
    assert after["generation"] == before["generation"] and after["annotations"] == before["annotations"]

    # a person approves: the next step
    res = tierguard("promote", NAME, "-n", NS, "--wait", "30", kubeconfig=c.kubeconfig)
    assert res.returncode == 0, res.stderr
    st = tenv.wait(lambda s: s.get("canaryWeight") == 10, "weight 10 after the approval")
    assert st["phase"] == "Progressing" and st["currentStep"] == 1
    res = tierguard("promote", NAME, "-n", NS, "--full", "--wait", "30", kubeconfig=c.kubeconfig)
    assert res.returncode == 0, res.stderr
    tenv.wait(lambda s: s.get("phase") == "Succeeded" and s["stableRevision"] == revision, "tuned stable")


def test_a_concurrent_edit_is_a_clear_error_and_nothing_is_written(
    tenv: TuneEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between tune's read and its write someone edits the policy: the API server refuses tune's
    patch (resourceVersion precondition) and the edit survives."""
    c = tenv.cluster
    real = KubeApi.merge_patch

    def meddle(self: KubeApi, path: str, patch: dict[str, Any]) -> Any:
        merge_patch(c, policies_path(NS, NAME), {"metadata": {"labels": {"edited": "by-someone"}}})
        return real(self, path, patch)

    monkeypatch.setattr(KubeApi, "merge_patch", meddle)
    sqlite = f"sqlite:{tenv.tmp / 'review.db'}"
    fill(sqlite, current=0.65, cliff=0.7)  # new evidence: 0.65 is no longer safe, 0.7 is
    before = tenv.obj()
    code = cli_main(
        ["tune", "--store", sqlite, "--policy-ref", f"{NS}/{NAME}", "--apply", "--max-accuracy-drop", "0.01",
         "--kubeconfig", str(c.kubeconfig)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "changed since it was read" in err and "nothing applied" in err, err
    after = tenv.obj()
    assert after["metadata"]["labels"]["edited"] == "by-someone"
    assert _threshold(after) == _threshold(before) == 0.65


def test_autotune_runs_as_a_cronjob_with_a_role_for_its_own_policy(tenv: TuneEnv) -> None:
    c = tenv.cluster
    obj = tenv.obj()
    spec = CascadePolicySpec.model_validate(obj["spec"])
    assert spec.auto_tune is not None
    cj = get(c, autotune.cron_job_path(NS, NAME))
    assert cj is not None, tenv.operator.tail()
    assert cj["spec"]["schedule"] == autotune.schedule(NS, NAME, spec.auto_tune)
    assert cj["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{NAME}-tune"
    (container,) = pod["containers"]
    assert container["args"][:4] == ["tune", "--apply", "--policy-ref", f"{NS}/{NAME}"]

    # the job's identity: this policy, get and patch, nothing more
    token = _token(tenv.tune_kubeconfig())
    for verb in ("get", "patch"):
        assert _can(
            c, token, group="tierguard.io", resource="cascadepolicies", verb=verb, namespace=NS, name=NAME
        )
    denied = [
        dict(group="tierguard.io", resource="cascadepolicies", verb="patch", namespace=NS, name="other"),
        dict(group="tierguard.io", resource="cascadepolicies", verb="list", namespace=NS),
        dict(group="tierguard.io", resource="cascadepolicies", verb="delete", namespace=NS, name=NAME),
        dict(group="tierguard.io", resource="cascadepolicies", subresource="status", verb="patch", namespace=NS,
             name=NAME),
        dict(group="", resource="secrets", verb="get", namespace=NS),
        dict(group="", resource="configmaps", verb="patch", namespace=NS),
    ]  # fmt: skip
    for attrs in denied:
        assert not _can(c, token, **attrs), attrs

    # what the CronJob's pod runs, exactly, as that identity, on the PostgreSQL store the spec names
    assert f"--store {tenv.pg_url}" in " ".join(container["args"])
    rows = fill(tenv.pg_url, current=0.65, cliff=0.7)
    res = tierguard(*container["args"], env={"KUBECONFIG": str(tenv.tune_kubeconfig())})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "applied" in res.stdout, res.stdout
    obj = tenv.obj()
    record = _tuned_record(obj)
    assert _threshold(obj) == 0.7 and record.rows == rows and record.approval == "manual"
    st = tenv.wait(lambda s: s.get("canaryRevision") == record.revision, "the scheduled run's rollout")
    assert (st["phase"], st["canaryWeight"]) == ("Paused", 5)

    # autoTune removed: the operator (which cannot delete) suspends the CronJob
    merge_patch(c, policies_path(NS, NAME), {"spec": {"autoTune": None}})
    until(
        lambda: (get(c, autotune.cron_job_path(NS, NAME)) or {}).get("spec", {}).get("suspend") is True,
        30,
        "the CronJob suspended",
        tenv.operator.tail,
    )


def test_the_operator_never_hit_a_forbidden_error(tenv: TuneEnv) -> None:
    text = tenv.operator.log()
    assert "Forbidden" not in text and " 403 " not in text, tenv.operator.tail(200)
    assert "Traceback" not in text, tenv.operator.tail(200)
