"""End to end: operator + real API server + real Prometheus + real proxies + real simulators.

    kube-apiserver/etcd (RBAC, audit log) <- tierguard operator (the chart's ServiceAccount)
                                                  | queries
    Prometheus (1s scrapes) --scrapes-->  2 x tierguard proxy  --> tierguard sim (cheap model)
                                                  ^            --> tierguard sim (capable model)
    the test: load generator, ConfigMap -> file sync (no kubelet runs pods here)

The proxies run locally on the config the operator rendered into the ConfigMap: the test copies
the ConfigMap's ``config.yaml`` into the file the proxies hot-reload, as a kubelet would update
a mounted ConfigMap. Prometheus adds the ``namespace`` label to the proxies' series, as a
ServiceMonitor scrape does.

Measured and printed: the rollout 5 -> 10 -> 25 -> 50 -> 100 on healthy data, the time from an
SLO breach (the cheap model's simulator starts failing) to canary weight 0 (in the status, the
ConfigMap and every proxy), and the API calls the operator makes per analysis interval (from the
API server's audit log).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from needs import shared_data_path
from procs import RunningProcess, start_proxy, start_sim, write_outcomes
from test_operator_k8s import (
    SERVICE_ACCOUNT,
    OperatorProcess,
    cli,
    condition,
    config_of,
    events_of,
    get,
    install_chart_rbac,
    install_crds,
    policies_path,
    slo_manifest,
    slos_path,
    status_of,
    until,
)
from tierguard.demo.traffic import ConfigSync, Load, StatusLog
from tierguard.localenv.kube import KubeCluster
from tierguard.policy import RolloutSpec
from tierguard.rollout.decide import time_to_rollback

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = shared_data_path()
NS = "e2e"
INTERVAL = "4s"
LOAD_RPS = 50.0
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


# --------------------------------------------------------------------------- data


def _generated_rows(n: int = 300) -> list[dict[str, Any]]:
    """Small outcomes of our own: a cheap model confident on about 60% of prompts."""
    rng = random.Random(7)
    rows = []
    for i in range(n):
        p = rng.choice([0.95, 0.9, 0.99, 0.97, 0.3, 0.5]) if rng.random() < 0.95 else 0.1
        rows.append(
            {
                "qid": f"gen-{i}",
                "system_prompt": "Answer with one letter.",
                "user_prompt": f"Question {i}: which option is right? A, B, C or D?",
                "models": {
                    "cheap": {
                        "answer": "B",
                        "correct": p > 0.8,
                        "conf_logprob": math.log(p),
                        "latency_ms": 5,
                    },
                    "capable": {
                        "answer": "B",
                        "correct": True,
                        "conf_logprob": math.log(0.99),
                        "latency_ms": 10,
                    },
                },
            }
        )
    return rows


@dataclass
class Data:
    path: Path
    cheap: str
    capable: str
    prompts: list[tuple[str | None, str]]


def _data(tmp: Path) -> Data:
    if SHARED_DATA.is_file():
        path, cheap, capable = SHARED_DATA, "gpt-4o-mini", "gpt-4o"
    else:
        path, cheap, capable = write_outcomes(tmp / "outcomes.jsonl", _generated_rows()), "cheap", "capable"
    prompts = []
    with path.open() as fh:
        for line in fh:
            row = json.loads(line)
            prompts.append((row.get("system_prompt"), row["user_prompt"]))
            if len(prompts) >= 2000:
                break
    return Data(path, cheap, capable, prompts)


# --------------------------------------------------------------------------- moving parts


class Endpoint(Protocol):
    """Where a proxy listens: a local process, a pod or a Service."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def base(self) -> str: ...


def proxy_canary_weight(proxy: Endpoint, policy: str) -> float | None:
    with urllib.request.urlopen(f"{proxy.base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("tierguard_canary_weight{") and f'policy="{policy}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def proxy_config_hash(proxy: Endpoint) -> str | None:
    with urllib.request.urlopen(f"{proxy.base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("tierguard_config_info{"):
            return line.split('config_hash="', 1)[1].split('"', 1)[0]
    return None


# --------------------------------------------------------------------------- fixture


@dataclass
class E2E:
    cluster: KubeCluster
    operator: OperatorProcess
    prometheus: Any
    data: Data
    sims: dict[str, RunningProcess]
    tmp: Path
    audit_log: Path
    sa_user: str
    cleanups: list[Any] = field(default_factory=list)

    def policy(
        self, name: str, steps: list[dict[str, Any]] | None = None, failure_threshold: int = 2
    ) -> dict[str, Any]:
        rollout: dict[str, Any] = {
            "interval": INTERVAL,
            "failureThreshold": failure_threshold,
            "minSamples": 5,
        }
        if steps is not None:
            rollout["steps"] = steps
        return {
            "apiVersion": "tierguard.io/v1alpha1",
            "kind": "CascadePolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "tiers": [
                    {
                        "name": "mini",
                        "baseUrl": self.sims["cheap"].base + "/v1",
                        "model": self.data.cheap,
                        "confidence": {"threshold": 0.8},
                        "timeoutSeconds": 10,
                    },
                    {
                        "name": "big",
                        "baseUrl": self.sims["capable"].base + "/v1",
                        "model": self.data.capable,
                        "timeoutSeconds": 10,
                    },
                ],
                "rollout": rollout,
                "slos": [{"name": "quality"}],
                "proxy": {"replicas": 2},
            },
        }

    def launch(self, manifest: dict[str, Any]) -> tuple[list[RunningProcess], ConfigSync, Load, StatusLog]:
        """Create the policy, then run what the cluster would: its proxies on the rendered config."""
        name = manifest["metadata"]["name"]
        log = StatusLog(self.cluster, NS, name)
        log.start()
        self.cleanups.append(log.stop_event.set)
        self.cluster.create(policies_path(NS), manifest)
        until(lambda: config_of(self.cluster, NS, name), 30, "the rendered ConfigMap", self.operator.tail)
        path = self.tmp / f"{name}.yaml"
        sync = ConfigSync(self.cluster, NS, name, path)
        sync.start()
        self.cleanups.append(sync.stop_event.set)
        until(lambda: path.is_file(), 10, "the config file")
        proxies = []
        for _ in range(2):
            p = start_proxy(path, reload_interval=0.2, decision_log="off", log_dir=self.tmp)
            self.cleanups.append(p.stop)
            proxies.append(p)
        self.prometheus.set_targets([(f"{p.host}:{p.port}", {"namespace": NS}) for p in proxies])
        load = Load(proxies, self.data.prompts, LOAD_RPS)
        load.start()
        self.cleanups.append(load.stop_event.set)
        return proxies, sync, load, log

    def faults(self, sim: str, **faults: float) -> None:
        req = urllib.request.Request(
            f"{self.sims[sim].base}/admin/faults",
            json.dumps(faults).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def audit(self, since: float, until_: float) -> list[dict[str, Any]]:
        """Completed, non-watch API requests of the operator between two wall-clock times."""
        out = []
        for line in self.audit_log.read_text().splitlines():
            e = json.loads(line)
            if e.get("user", {}).get("username") != self.sa_user or e.get("stage") != "ResponseComplete":
                continue
            if e.get("verb") == "watch":
                continue
            t = datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            if since <= t <= until_:
                out.append(e)
        return out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, prometheus_session_factory: Any) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    policy_file = tmp / "audit-policy.yaml"
    policy_file.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit_log = tmp / "audit.log"
    cluster = KubeCluster(
        controller_manager=False,
        extra_apiserver_args=[f"--audit-policy-file={policy_file}", f"--audit-log-path={audit_log}"],
    ).start()
    cleanups: list[Any] = []
    try:
        install_crds(cluster)
        kubeconfig = install_chart_rbac(cluster, NS)
        cluster.create(slos_path(NS), slo_manifest("quality", NS))
        data = _data(tmp)
        sims = {
            "cheap": start_sim(data.path, data.cheap, latency_scale=0, log_dir=tmp),
            "capable": start_sim(data.path, data.capable, latency_scale=0, log_dir=tmp),
        }
        cleanups += [s.stop for s in sims.values()]
        prometheus = prometheus_session_factory(scrape_interval="1s")
        operator = OperatorProcess(kubeconfig, NS, tmp, prometheus_url=prometheus.url).start()
        cleanups.append(operator.stop)
        yield E2E(
            cluster,
            operator,
            prometheus,
            data,
            sims,
            tmp,
            audit_log,
            f"system:serviceaccount:{NS}:{SERVICE_ACCOUNT}",
        )
    finally:
        for fn in reversed(cleanups):
            with contextlib.suppress(Exception):
                fn()
        cluster.stop()


def run_cleanups(cleanups: list[Any]) -> None:
    """Call every cleanup, newest first, ignoring their errors; empty the list."""
    for fn in reversed(cleanups):
        with contextlib.suppress(Exception):
            fn()
    cleanups.clear()


@pytest.fixture
def env(e2e: E2E) -> Iterator[E2E]:
    """The module's environment; what a test launched (proxies, load, sync) is stopped after it."""
    try:
        yield e2e
    finally:
        run_cleanups(e2e.cleanups)


# --------------------------------------------------------------------------- tests


def test_healthy_rollout_walks_every_step_and_promotes(env: E2E) -> None:
    e2e = env
    t0 = time.monotonic()
    proxies, sync, load, log = e2e.launch(e2e.policy("healthy"))
    st = until(
        lambda: (s := status_of(e2e.cluster, NS, "healthy")).get("phase") == "Succeeded" and s,
        180,
        "the rollout to succeed",
        lambda: (
            json.dumps(status_of(e2e.cluster, NS, "healthy"), indent=1)[-3000:] + "\n" + e2e.operator.tail()
        ),
    )
    duration = time.monotonic() - t0
    assert log.weights() == [5, 10, 25, 50, 100], log.changes
    assert st["failedChecks"] == 0 and condition(st, "Ready")["status"] == "True"
    assert "canaryRevision" not in st and st["stableRevision"] != "capable-only"
    # every analysis that moved the rollout was a counted pass over real canary traffic
    last = st["lastAnalysis"]
    assert last["result"] == "Pass" and last["counted"] and last["samples"]["mini"] >= 5
    assert all(c["verdict"] == "PASS" for c in last["checks"])
    # the proxies run the promoted config: no canary, and the hash the status expects
    until(
        lambda: all(proxy_config_hash(p) == st["configHash"] for p in proxies),
        15,
        "proxies on the promoted config",
    )
    uid = get(e2e.cluster, policies_path(NS, "healthy"))["metadata"]["uid"]
    reasons = [e["reason"] for e in events_of(e2e.cluster, NS, uid)]
    assert reasons.count("StepAdvanced") == 4 and reasons.count("Promoted") == 1, reasons
    assert load.ok > 0
    print(
        f"\nhealthy rollout 5->10->25->50->100->promoted in {duration:.1f}s (interval {INTERVAL}); "
        f"load: {load.ok} ok / {load.failed} failed requests; ConfigMap writes synced: {len(sync.writes)}"
    )


def test_breach_rolls_back_within_the_stated_time(env: E2E) -> None:
    e2e = env
    manifest = e2e.policy("breach")
    proxies, sync, load, log = e2e.launch(manifest)
    until(lambda: status_of(e2e.cluster, NS, "breach").get("canaryWeight", 0) >= 25, 120, "weight 25",
          lambda: json.dumps(status_of(e2e.cluster, NS, "breach"), indent=1)[-2000:] + "\n" + e2e.operator.tail())  # fmt: skip
    e2e.faults("cheap", error_rate=1.0)  # the canary's cheap tier degrades
    t_breach = time.monotonic()
    e2e.cleanups.append(lambda: e2e.faults("cheap", error_rate=0.0))
    try:
        st = until(
            lambda: (s := status_of(e2e.cluster, NS, "breach")).get("phase") == "RolledBack" and s,
            60,
            "the rollback",
            lambda: (
                json.dumps(status_of(e2e.cluster, NS, "breach"), indent=1)[-3000:]
                + "\n"
                + e2e.operator.tail()
            ),
        )
        t_status = time.monotonic()
        t_configmap = until(
            lambda: next((t for t, w in sync.writes if t >= t_breach and w == 0), None),
            30,
            "ConfigMap weight 0",
        )
        until(lambda: all(proxy_canary_weight(p, "breach") == 0 for p in proxies), 30, "proxies at weight 0")
        t_proxies = time.monotonic()
    finally:
        e2e.faults("cheap", error_rate=0.0)

    assert st["canaryWeight"] == 0 and st["failedChecks"] == 2
    assert (
        condition(st, "Degraded")["status"] == "True" and condition(st, "Degraded")["reason"] == "RolledBack"
    )
    breached = [c for c in st["lastAnalysis"]["checks"] if c["verdict"] == "BREACH"]
    assert any(c["objective"] == "cheap-errors" and c["value"] > 0.05 for c in breached), breached
    uid = get(e2e.cluster, policies_path(NS, "breach"))["metadata"]["uid"]
    (event,) = [e for e in events_of(e2e.cluster, NS, uid) if e["reason"] == "RolledBack"]
    assert event["type"] == "Warning" and "quality/cheap-errors" in event["message"]

    bound = time_to_rollback(RolloutSpec.model_validate(manifest["spec"]["rollout"])).total_seconds()
    scrape, sync_poll, reload = 1.0, 0.2, 0.2
    to_status, to_cm, to_proxies = t_status - t_breach, t_configmap - t_breach, t_proxies - t_breach
    print(
        f"\nSLO breach -> RolledBack in status {to_status:.1f}s, -> ConfigMap weight 0 {to_cm:.1f}s, "
        f"-> every proxy at weight 0 {to_proxies:.1f}s (stated bound {bound:.0f}s + scrape {scrape:.0f}s; "
        f"interval {INTERVAL}, failureThreshold 2); weights before: {log.weights()}"
    )
    # the stated bound plus one scrape; the test's own polling (status 0.1s, ConfigMap sync 0.2s,
    # proxy reload 0.2s, metrics read) adds at most about a second
    assert to_proxies <= bound + scrape + sync_poll + reload + 1.5, (to_status, to_cm, to_proxies, bound)


def test_api_calls_per_analysis_interval_and_a_promotion_at_an_indefinite_pause(env: E2E) -> None:
    e2e = env
    steps: list[dict[str, Any]] = [{"weight": 10, "pause": "indefinite"}, {"weight": 100}]
    e2e.launch(e2e.policy("paused", steps=steps))
    st = until(
        lambda: (
            (s := status_of(e2e.cluster, NS, "paused")).get("lastAnalysis", {}).get("result") == "Pass" and s
        ),
        60,
        "a passing analysis at the paused step",
        lambda: (
            json.dumps(status_of(e2e.cluster, NS, "paused"), indent=1)[-2000:] + "\n" + e2e.operator.tail()
        ),
    )
    assert st["phase"] == "Paused" and st["canaryWeight"] == 10
    assert condition(st, "Progressing")["reason"] == "AwaitingPromotion"

    # the steady state: analyses keep passing, nothing moves; count the operator's API requests
    seconds = 5 * 4.0
    start = datetime.now(UTC).timestamp()
    time.sleep(seconds)
    end = datetime.now(UTC).timestamp()
    st = status_of(e2e.cluster, NS, "paused")
    assert st["canaryWeight"] == 10 and st["phase"] == "Paused"
    calls = e2e.audit(start, end)
    per_interval = len(calls) / (seconds / 4.0)
    kinds: dict[str, int] = {}
    for c in calls:
        key = f"{c['verb']} {c['objectRef'].get('resource', '')}" + (
            f"/{c['objectRef']['subresource']}" if c["objectRef"].get("subresource") else ""
        )
        kinds[key] = kinds.get(key, 0) + 1
    print(
        f"\noperator API requests per analysis interval (steady state, audit log): {per_interval:.1f} {kinds}"
    )
    assert per_interval <= 2.5, kinds  # one GET of the policy, one status PATCH

    # an indefinite pause waits for promotion: the CLI moves it on
    res = cli("promote", "paused", "-n", NS, "--wait", "30", kubeconfig=e2e.cluster.kubeconfig)
    assert res.returncode == 0, res.stderr
    st = until(
        lambda: (s := status_of(e2e.cluster, NS, "paused")).get("phase") == "Succeeded" and s,
        60,
        "the promotion after the last step",
        lambda: (
            json.dumps(status_of(e2e.cluster, NS, "paused"), indent=1)[-2000:] + "\n" + e2e.operator.tail()
        ),
    )
    assert condition(st, "Ready")["status"] == "True"
