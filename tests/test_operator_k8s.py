"""The operator against a real kube-apiserver + etcd (+ kube-controller-manager), in RBAC mode.

The CRDs come from ``crds/``; the operator's ServiceAccount, Role and RoleBinding come from the
Helm chart (``helm install --skip-crds``), and the operator runs as that ServiceAccount, so every
test here also proves the chart's role is enough. Two ways of running the operator:

* ``tierguard operator`` as a subprocess (what a pod runs): children, status, events, manual
  control, invalid policies, restarts. It has no Prometheus, so its analyses hold with
  ``ProviderError`` and rollouts move only by hand (which also proves holds never move weights).
* one reconcile = one tick, in-process, with a fake metrics provider and a fake clock (the
  rollout engine's real ``observe`` and ``decide``): walks, promotions, rollbacks, holds, and the
  number of API calls per tick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import yaml

from tierguard.kube.client import KubeApi, load_api_client
from tierguard.kube.handlers import Reconciler
from tierguard.kube.main import metrics_observer
from tierguard.kube.render import CONFIG_KEY, child_name
from tierguard.localenv.kube import KubeApiError, KubeCluster
from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess
from tierguard.metrics.fake import FakeProvider
from tierguard.metrics.provider import ProviderError
from tierguard.policy import CAPABLE_ONLY, CascadePolicySpec, ProxyConfig, Revision, proxy_config_from_data

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s]

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "crds"
CHART = REPO / "charts" / "tierguard"
GROUP_PATH = "/apis/tierguard.io/v1alpha1"
RELEASE = "tg"
SERVICE_ACCOUNT = f"{RELEASE}-tierguard"  # the chart's fullname

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def until(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    diag: Callable[[], str] | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diag()}" if diag else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(0.1)


def policies_path(ns: str, name: str | None = None) -> str:
    return f"{GROUP_PATH}/namespaces/{ns}/cascadepolicies" + (f"/{name}" if name else "")


def slos_path(ns: str, name: str | None = None) -> str:
    return f"{GROUP_PATH}/namespaces/{ns}/qualityslos" + (f"/{name}" if name else "")


def get(cluster: KubeCluster, path: str) -> Any:
    status, body = cluster.request("GET", path, check=False)
    if status == 404:
        return None
    if status != 200:
        raise KubeApiError("GET", path, status, body)
    return body


def merge_patch(cluster: KubeCluster, path: str, patch: dict[str, Any]) -> Any:
    return cluster.request("PATCH", path, patch, content_type="application/merge-patch+json")[1]


def server_side_apply(cluster: KubeCluster, path: str, obj: dict[str, Any]) -> Any:
    return cluster.request(
        "PATCH",
        f"{path}?fieldManager=tierguard-tests&force=true",
        obj,
        content_type="application/apply-patch+yaml",
    )[1]


def install_crds(cluster: KubeCluster) -> list[str]:
    """Apply every manifest in crds/ and wait until the API server serves them."""
    names = []
    for f in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            server_side_apply(cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", doc)
            names.append(name)

    def established() -> bool:
        for name in names:
            crd = get(cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = {c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []}
            if conds.get("Established") != "True":
                return False
        return True

    until(established, 60, "CRDs established")
    until(lambda: get(cluster, f"{GROUP_PATH}") is not None, 30, "the API group to be served")
    return names


def install_chart_rbac(cluster: KubeCluster, ns: str, *values: str) -> Path:
    """``helm install`` the chart (without CRDs) into ``ns``; a kubeconfig for its ServiceAccount.
    ``values`` are more ``--set`` values (``replicaCount=2``)."""
    cluster.create_namespace(ns)
    sets = [arg for v in values for arg in ("--set", v)]
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", ns, "--skip-crds",
        "--set", "prometheus.url=http://127.0.0.1:9", "--set", f"watch.namespace={ns}", *sets,
    )  # fmt: skip
    return cluster.kubeconfig_for_service_account(ns, SERVICE_ACCOUNT, create=False)


def _token(kubeconfig: Path) -> str:
    return str(json.loads(kubeconfig.read_text())["users"][0]["user"]["token"])


class OperatorProcess:
    """``tierguard operator`` in a subprocess, as the chart's ServiceAccount."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        prometheus_url: str | None = None,
        extra_args: tuple[str, ...] = (),
        label: str = "",
    ) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.prometheus_url = prometheus_url
        self.extra_args, self.label = extra_args, label
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        port = free_port()
        self.starts += 1
        args = [
            sys.executable, "-m", "tierguard", "operator", "--namespace", self.namespace, "--standalone",
            "--kubeconfig", str(self.kubeconfig), "--verbose", "--liveness", f"http://127.0.0.1:{port}/healthz",
        ]  # fmt: skip
        if self.prometheus_url:
            args += ["--prometheus-url", self.prometheus_url]
        args += self.extra_args
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1")
        self.proc = ManagedProcess(
            "tierguard-operator",
            args,
            self.log_dir / f"operator{self.label}-{self.namespace}-{self.starts}.log",
            env=env,
        ).start()

        def live() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"the operator exited:\n{self.proc.tail(80)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        until(live, 60, "the operator's liveness endpoint")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log(self) -> str:
        return "\n\n".join(
            p.read_text(errors="replace")
            for p in sorted(self.log_dir.glob(f"operator{self.label}-{self.namespace}-*.log"))
        )

    def tail(self, n: int = 60) -> str:
        return "operator log (tail):\n" + "\n".join(self.log().splitlines()[-n:])


TIERS = [
    {
        "name": "mini",
        "baseUrl": "http://127.0.0.1:9101/v1",
        "model": "gpt-4o-mini",
        "confidence": {"threshold": 0.8},
    },
    {"name": "big", "baseUrl": "http://127.0.0.1:9102/v1", "model": "gpt-4o"},
]


def policy_manifest(
    name: str,
    ns: str,
    *,
    steps: list[dict[str, Any]] | None = None,
    interval: str = "1s",
    slos: list[str] = (),  # type: ignore[assignment]
    threshold: float = 0.8,
    failure_threshold: int = 2,
    min_samples: int = 10,
    proxy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tiers = json.loads(json.dumps(TIERS))
    tiers[0]["confidence"]["threshold"] = threshold
    rollout: dict[str, Any] = {
        "interval": interval,
        "failureThreshold": failure_threshold,
        "minSamples": min_samples,
    }
    if steps is not None:
        rollout["steps"] = steps
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "tiers": tiers,
            "rollout": rollout,
            "slos": [{"name": s} for s in slos],
            "proxy": {"replicas": 1, **(proxy or {})},
        },
    }


def slo_manifest(name: str, ns: str, objectives: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "QualitySLO",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "objectives": objectives
            or [
                {"name": "cheap-errors", "tier": "mini", "signal": "error_rate", "max": 0.05},
                {"name": "escalations", "tier": "mini", "signal": "escalation_rate", "max": 0.9},
            ]
        },
    }


def status_of(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    obj = get(cluster, policies_path(ns, name))
    return dict((obj or {}).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (status.get("conditions") or []) if c["type"] == type_), {})


def observed(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    obj = get(cluster, policies_path(ns, name))
    if obj and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]:
        return dict(obj)
    return None


def config_of(cluster: KubeCluster, ns: str, name: str) -> ProxyConfig | None:
    cm = get(cluster, f"/api/v1/namespaces/{ns}/configmaps/{child_name(name)}")
    if cm is None:
        return None
    return proxy_config_from_data(yaml.safe_load(cm["data"][CONFIG_KEY]), "configmap")


def events_of(cluster: KubeCluster, ns: str, uid: str) -> list[dict[str, Any]]:
    body = get(cluster, f"/api/v1/namespaces/{ns}/events?fieldSelector={quote('involvedObject.uid=' + uid)}")
    return list((body or {}).get("items", []))


def cli(*args: str, kubeconfig: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "operator"))
    return subprocess.run(
        [sys.executable, "-m", "tierguard", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip


# --------------------------------------------------------------------------- fixtures


class Env:
    def __init__(self, cluster: KubeCluster, ns: str, sa_kubeconfig: Path, operator: OperatorProcess) -> None:
        self.cluster, self.ns, self.sa_kubeconfig, self.operator = cluster, ns, sa_kubeconfig, operator

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        path = policies_path(self.ns) if obj["kind"] == "CascadePolicy" else slos_path(self.ns)
        return dict(self.cluster.create(path, obj))

    def wait_observed(self, name: str, timeout: float = 30) -> dict[str, Any]:
        return until(
            lambda: observed(self.cluster, self.ns, name), timeout, f"{name} observed", self.operator.tail
        )

    def wait_status(
        self, name: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = status_of(self.cluster, self.ns, name)
            return st if st and pred(st) else None

        return until(
            check,
            timeout,
            what,
            lambda: (
                json.dumps(status_of(self.cluster, self.ns, name), indent=1)[:3000]
                + "\n"
                + self.operator.tail()
            ),
        )


@pytest.fixture(scope="module")
def crds(kube_cluster: KubeCluster) -> list[str]:
    if not any(CRDS.glob("*.yaml")):
        pytest.fail("crds/ is empty: generate the CRDs with 'tierguard crds --write crds/'")
    return install_crds(kube_cluster)


@pytest.fixture(scope="module")
def env(
    kube_cluster: KubeCluster, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    ns = "op-k8s"
    kubeconfig = install_chart_rbac(kube_cluster, ns)
    operator = OperatorProcess(kubeconfig, ns, tmp_path_factory.mktemp("operator")).start()
    try:
        yield Env(kube_cluster, ns, kubeconfig, operator)
    finally:
        operator.stop()


# --------------------------------------------------------------------------- CRDs


def test_crds_serve_printer_columns_short_names_and_status(env: Env) -> None:
    crd = get(
        env.cluster, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/cascadepolicies.tierguard.io"
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"].get("status") == {}
    columns = [c["name"].lower() for c in version["additionalPrinterColumns"]]
    for wanted in ("phase", "weight", "stable", "canary", "age"):
        assert any(wanted in c for c in columns), (wanted, columns)
    assert crd["spec"]["names"].get("shortNames")


@pytest.mark.parametrize(
    ("case", "mutate", "needle"),
    [
        ("one tier", lambda s: s.update(tiers=s["tiers"][:1]), "tiers"),
        ("threshold above 1", lambda s: s["tiers"][0]["confidence"].update(threshold=1.5), "threshold"),
        (
            "weight above 100",
            lambda s: s["rollout"].update(steps=[{"weight": 50}, {"weight": 120}]),
            "weight",
        ),
        (
            "decreasing weights",
            lambda s: s["rollout"].update(steps=[{"weight": 50}, {"weight": 10}]),
            "increasing",
        ),
        (
            "equal weights",
            lambda s: s["rollout"].update(steps=[{"weight": 5}, {"weight": 5}, {"weight": 100}]),
            "strictly increasing",
        ),
        (
            "a repeated weight after others",
            lambda s: s["rollout"].update(steps=[{"weight": 5}, {"weight": 10}, {"weight": 10}]),
            "strictly increasing",
        ),
        (
            "a step after 100",
            lambda s: s["rollout"].update(steps=[{"weight": 100}, {"weight": 100}]),
            "steps",
        ),
        ("bad tier name", lambda s: s["tiers"][0].update(name="Mini_Tier"), "name"),
        (
            "env value and valueFrom",
            lambda s: s["proxy"].update(
                env=[{"name": "K", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
            ),
            "exactly one of value or valueFrom",
        ),
        (
            "duplicate env name",
            lambda s: s["proxy"].update(env=[{"name": "K", "value": "1"}, {"name": "K", "value": "2"}]),
            "Duplicate value",
        ),
        (
            "relative secret mount path",
            lambda s: s["proxy"].update(secretMounts=[{"secretName": "s", "mountPath": "keys"}]),
            "mountPath",
        ),
        ("unknown field", lambda s: s.update(tierz=[]), "tierz"),
    ],
)
def test_schema_rejects_invalid_policies(
    env: Env, case: str, mutate: Callable[[dict[str, Any]], None], needle: str
) -> None:
    obj = policy_manifest(f"bad-{case.replace(' ', '-')}", env.ns)
    mutate(obj["spec"])
    status, body = env.cluster.request(
        "POST", policies_path(env.ns) + "?fieldValidation=Strict", obj, check=False
    )
    assert status in (400, 422), (case, status, body)  # 400: unknown field (Strict)
    assert needle in json.dumps(body), (case, body)


# --------------------------------------------------------------------------- the subprocess operator


def test_new_policy_gets_owned_children_status_and_events(env: Env) -> None:
    env.create(slo_manifest("quality", env.ns))
    obj = policy_manifest(
        "chat",
        env.ns,
        slos=["quality"],
        steps=[{"weight": 5, "pause": "indefinite"}, {"weight": 50}, {"weight": 100}],
    )
    t0 = time.monotonic()
    created = env.create(obj)
    uid = created["metadata"]["uid"]

    children = (
        f"/api/v1/namespaces/{env.ns}/configmaps/chat-proxy",
        f"/apis/apps/v1/namespaces/{env.ns}/deployments/chat-proxy",
        f"/api/v1/namespaces/{env.ns}/services/chat-proxy",
    )

    def ready() -> bool:
        # the status is written first, then the children one by one (ConfigMap first)
        return bool(
            observed(env.cluster, env.ns, "chat")
            and config_of(env.cluster, env.ns, "chat")
            and all(get(env.cluster, p) is not None for p in children)
        )

    until(ready, 30, "status and children", env.operator.tail)
    latency = time.monotonic() - t0
    print(f"\nreconcile latency (create -> status observed + children applied): {latency * 1000:.0f} ms")

    # children, each owned by the policy (controller reference)
    for path in children:
        child = get(env.cluster, path)
        assert child is not None, path
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["kind"] == "CascadePolicy" and ref["controller"] is True, ref
    # no ServiceMonitor CRD in this cluster (yet): none rendered, nothing failed
    if get(env.cluster, "/apis/monitoring.coreos.com/v1") is None:
        assert "servicemonitors" not in env.operator.log()

    # the ConfigMap is the ProxyConfig the proxy loads: capable-only stable, the spec's revision at 5%
    spec = CascadePolicySpec.model_validate(obj["spec"])
    config = config_of(env.cluster, env.ns, "chat")
    assert config is not None
    assert config.stable.name == CAPABLE_ONLY and config.stable.mode == "capable-only"
    assert config.canary is not None and config.canary.name == Revision.of(spec.cascade()).name
    assert config.canary_weight == 5 and config.policy == "chat" and config.namespace == env.ns

    st = env.wait_status(
        "chat", lambda s: condition(s, "Progressing").get("reason") == "ProviderError", "a ProviderError hold"
    )
    assert st["phase"] == "Paused"
    assert st["canaryRevision"] == config.canary.name and st["stableRevision"] == CAPABLE_ONLY
    assert st["canaryWeight"] == 5 and st["currentStep"] == 0
    assert st["configHash"] == config.config_hash()
    assert condition(st, "Ready")["status"] == "False"
    assert condition(st, "Progressing")["status"] == "True"
    assert condition(st, "Reconciling")["status"] == "True"  # kstatus mirror
    assert condition(st, "Degraded")["status"] == "False"
    assert st["lastAnalysis"]["result"] == "ProviderError" and st["failedChecks"] == 0

    reasons = {e["reason"] for e in events_of(env.cluster, env.ns, uid)}
    assert {"NewRevision", "HoldProviderError"} <= reasons, reasons

    if env.cluster.has_controller_manager:  # the Deployment is valid: the controller made a ReplicaSet

        def replica_set() -> bool:
            rs = get(env.cluster, f"/apis/apps/v1/namespaces/{env.ns}/replicasets")
            return any(r["metadata"]["ownerReferences"][0]["name"] == "chat-proxy" for r in rs["items"])

        until(replica_set, 30, "a ReplicaSet of chat-proxy")


def test_proxy_pods_get_secrets_without_the_operator_reading_them(env: Env) -> None:
    """spec.proxy.env (a tier's API key from a Secret) and secretMounts (the feedback key file)
    reach the Deployment written by the operator running as the chart's ServiceAccount, which has
    no access to Secrets: the pods' kubelet reads them."""
    obj = policy_manifest("keyed", env.ns)
    obj["spec"]["tiers"][0]["apiKey"] = {"env": "OPENAI_API_KEY"}
    obj["spec"]["proxy"].update(
        feedbackKey={"file": "/var/run/tierguard/feedback/key"},
        env=[{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}}],
        secretMounts=[{"secretName": "tierguard-feedback", "mountPath": "/var/run/tierguard/feedback"}],
    )
    env.create(obj)
    path = f"/apis/apps/v1/namespaces/{env.ns}/deployments/keyed-proxy"
    dep = until(lambda: get(env.cluster, path), 30, "the Deployment", env.operator.tail)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["env"] == [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}}
    ]
    assert {"name": "secret-0", "mountPath": "/var/run/tierguard/feedback", "readOnly": True} in c[
        "volumeMounts"
    ]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "secret-0"]
    assert vol["secret"]["secretName"] == "tierguard-feedback"
    config = config_of(env.cluster, env.ns, "keyed")
    assert config is not None and config.settings.feedback_key is not None
    assert config.settings.feedback_key.file == "/var/run/tierguard/feedback/key"
    token = _token(env.sa_kubeconfig)
    for verb in ("get", "list", "watch"):
        assert not _can(env.cluster, token, group="", resource="secrets", verb=verb, namespace=env.ns)


# The bounds docs/operator.md states (its table quotes the measured figures beside them). Loose
# against the measured ~0.2 s so a loaded CI machine passes, tight against the regressions that
# matter: a reconcile that waits for a timer (the minute-long wake-up) or a retry back-off.
RECONCILE_MEDIAN_BOUND_S = 1.0
RECONCILE_MAX_BOUND_S = 3.0


def test_reconcile_latency(env: Env) -> None:
    """From creating a policy to its status observed and its ConfigMap rendered, on a warm operator."""
    latencies = []
    for i in range(5):
        name = f"latency-{i}"
        t0 = time.monotonic()
        env.create(policy_manifest(name, env.ns))
        until(lambda n=name: observed(env.cluster, env.ns, n) and config_of(env.cluster, env.ns, n), 30, name)  # type: ignore[misc]
        latencies.append(time.monotonic() - t0)
    latencies.sort()
    print(
        f"\nreconcile latency over {len(latencies)} new policies: median {latencies[2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    assert latencies[2] < RECONCILE_MEDIAN_BOUND_S, latencies
    assert latencies[-1] < RECONCILE_MAX_BOUND_S, latencies


def test_holds_never_move_the_weight(env: Env) -> None:
    """No Prometheus: every analysis is a ProviderError hold; weight and failed checks stay."""
    before = status_of(env.cluster, env.ns, "chat")
    t = before["lastAnalysis"]["time"]
    after = env.wait_status("chat", lambda s: s["lastAnalysis"]["time"] > t, "another analysis")
    assert after["canaryWeight"] == 5 and after["currentStep"] == 0 and after["failedChecks"] == 0
    assert after["phase"] == "Paused"


def test_manual_control_through_the_cli(env: Env) -> None:
    admin = env.cluster.kubeconfig
    res = cli("promote", "chat", "-n", env.ns, "--wait", "30", kubeconfig=admin)
    assert res.returncode == 0, res.stderr + env.operator.tail()
    assert "canary weight:  50%" in res.stdout, res.stdout
    assert config_of(env.cluster, env.ns, "chat").canary_weight == 50  # type: ignore[union-attr]

    res = cli("abort", "chat", "-n", env.ns, "--wait", "30", kubeconfig=admin)
    assert res.returncode == 0, res.stderr
    st = status_of(env.cluster, env.ns, "chat")
    assert st["phase"] == "Aborted" and st["canaryWeight"] == 0
    assert condition(st, "Degraded")["reason"] == "Aborted"
    assert config_of(env.cluster, env.ns, "chat").canary_weight == 0  # type: ignore[union-attr]

    # promote (without --full) does not apply to an aborted rollout: a clear error, nothing moves
    res = cli("promote", "chat", "-n", env.ns, "--wait", "30", kubeconfig=admin)
    assert res.returncode == 2 and "resume" in res.stderr, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert status_of(env.cluster, env.ns, "chat")["phase"] == "Aborted"

    res = cli("resume", "chat", "-n", env.ns, "--wait", "30", kubeconfig=admin)
    assert res.returncode == 0, res.stderr
    st = status_of(env.cluster, env.ns, "chat")
    assert st["phase"] == "Paused" and st["canaryWeight"] == 5 and st["currentStep"] == 0

    # the same through the annotation (what GitOps or kubectl annotate does)
    merge_patch(
        env.cluster,
        policies_path(env.ns, "chat"),
        {"metadata": {"annotations": {"tierguard.io/action": "promote"}}},
    )
    st = env.wait_status("chat", lambda s: s["canaryWeight"] == 50, "weight 50 after the annotation")
    obj = get(env.cluster, policies_path(env.ns, "chat"))
    assert "tierguard.io/action" not in (obj["metadata"].get("annotations") or {})
    assert st["lastAction"]["action"] == "promote"

    res = cli("promote", "chat", "-n", env.ns, "--full", "--wait", "30", kubeconfig=admin)
    assert res.returncode == 0, res.stderr
    st = status_of(env.cluster, env.ns, "chat")
    assert st["phase"] == "Succeeded" and st["stableRevision"] != CAPABLE_ONLY and "canaryRevision" not in st
    assert condition(st, "Ready")["status"] == "True"
    config = config_of(env.cluster, env.ns, "chat")
    assert config is not None and config.canary is None and config.stable.name == st["stableRevision"]

    res = cli("status", "chat", "-n", env.ns, kubeconfig=admin)
    assert res.returncode == 0 and "Succeeded" in res.stdout
    res = cli("status", "-n", env.ns, "-o", "json", kubeconfig=admin)
    assert res.returncode == 0 and json.loads(res.stdout)[0]["status"]["phase"] == "Succeeded"
    res = cli("status", "nope", "-n", env.ns, kubeconfig=admin)
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_spec_changes_make_new_revisions_only_when_the_cascade_changes(env: Env) -> None:
    st = status_of(env.cluster, env.ns, "chat")
    stable = st["stableRevision"]
    obj = get(env.cluster, policies_path(env.ns, "chat"))
    uid = obj["metadata"]["uid"]

    # a rollout-only change: same revision, new generation observed, nothing starts
    merge_patch(env.cluster, policies_path(env.ns, "chat"), {"spec": {"rollout": {"interval": "2s"}}})
    after = env.wait_observed("chat")
    assert after["status"]["phase"] == "Succeeded" and after["status"]["stableRevision"] == stable

    # a new threshold: a new revision rolls out against the current stable (not capable-only now)
    tiers = obj["spec"]["tiers"]
    tiers[0]["confidence"]["threshold"] = 0.6
    merge_patch(env.cluster, policies_path(env.ns, "chat"), {"spec": {"tiers": tiers}})
    new = env.wait_observed("chat")["status"]
    expected = Revision.of(
        CascadePolicySpec.model_validate(get(env.cluster, policies_path(env.ns, "chat"))["spec"]).cascade()
    ).name
    assert new["canaryRevision"] == expected != stable
    assert new["stableRevision"] == stable and new["canaryWeight"] == 5 and new["currentStep"] == 0
    # the ConfigMap and the Event follow the status write (children, pod nudge, then events)
    config = until(
        lambda: (c := config_of(env.cluster, env.ns, "chat")) is not None and c.canary is not None and c,
        10,
        "the ConfigMap with the canary",
        env.operator.tail,
    )
    assert config.stable.name == stable
    until(
        lambda: any(
            e["reason"] == "NewRevision" and expected in e["message"] for e in events_of(env.cluster, env.ns, uid)
        ),
        10,
        "the NewRevision event",
        env.operator.tail,
    )


def test_risky_policy_is_flagged_then_cleared(env: Env) -> None:
    """A cheap tier with threshold 0 and a first step of 100%: the policy works (children are
    rendered) and says what is dangerous in the Risky condition and one Warning Event."""
    obj = policy_manifest("risky", env.ns, steps=[{"weight": 100}], threshold=0.0)
    created = env.create(obj)
    st = env.wait_status("risky", lambda s: condition(s, "Risky").get("status") == "True", "Risky=True")
    risky = condition(st, "Risky")
    assert risky["reason"] == "CheapTierAcceptsEverything"
    assert "'mini' accepts every answer" in risky["message"] and "100%" in risky["message"]
    until(lambda: config_of(env.cluster, env.ns, "risky"), 30, "the children (flagged, not refused)")
    uid = created["metadata"]["uid"]
    warnings = until(
        lambda: [e for e in events_of(env.cluster, env.ns, uid) if e["reason"] == "RiskyPolicy"],
        30,
        "an Event",
    )
    assert warnings[0]["type"] == "Warning" and len(warnings) == 1 and warnings[0].get("count", 1) == 1
    merge_patch(
        env.cluster,
        policies_path(env.ns, "risky"),
        {"spec": {"tiers": [{**TIERS[0], "confidence": {"threshold": 0.8}}, TIERS[1]],
                  "rollout": {"steps": [{"weight": 5}, {"weight": 100}]}}},
    )  # fmt: skip
    st = env.wait_status("risky", lambda s: condition(s, "Risky").get("status") == "False", "Risky=False")
    assert condition(st, "Risky")["reason"] == "NoKnownRisk"
    until(
        lambda: any(e["reason"] == "RiskCleared" for e in events_of(env.cluster, env.ns, uid)),
        30,
        "RiskCleared",
    )


def test_invalid_policy_is_ready_false_and_touches_nothing(env: Env) -> None:
    obj = policy_manifest("needs-slo", env.ns, slos=["not-there"])
    created = env.create(obj)
    st = env.wait_status("needs-slo", lambda s: s.get("phase") == "Invalid", "phase Invalid")
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "not-there" in ready["message"] and "not found" in ready["message"]
    assert get(env.cluster, f"/api/v1/namespaces/{env.ns}/configmaps/needs-slo-proxy") is None
    assert get(env.cluster, f"/apis/apps/v1/namespaces/{env.ns}/deployments/needs-slo-proxy") is None
    assert get(env.cluster, f"/api/v1/namespaces/{env.ns}/services/needs-slo-proxy") is None
    warnings = [
        e for e in events_of(env.cluster, env.ns, created["metadata"]["uid"]) if e["type"] == "Warning"
    ]
    assert any(e["reason"] == "InvalidSpec" and "not-there" in e["message"] for e in warnings)

    # fixing it (creating the SLO) is picked up from the QualitySLO watch
    env.create(slo_manifest("not-there", env.ns))
    st = env.wait_status("needs-slo", lambda s: s.get("phase") == "Progressing", "the rollout to start")
    assert st["canaryWeight"] == 5
    # the children follow the status write of the same tick
    until(lambda: config_of(env.cluster, env.ns, "needs-slo") is not None, 30, "the proxy ConfigMap")

    # an SLO objective naming a tier the cascade does not have
    env.create(
        slo_manifest(
            "wrong-tier", env.ns, [{"name": "x", "tier": "huge", "signal": "error_rate", "max": 0.1}]
        )
    )
    env.create(policy_manifest("bad-tier-ref", env.ns, slos=["wrong-tier"]))
    st = env.wait_status("bad-tier-ref", lambda s: s.get("phase") == "Invalid", "phase Invalid")
    assert "huge" in condition(st, "Ready")["message"]
    assert get(env.cluster, f"/api/v1/namespaces/{env.ns}/configmaps/bad-tier-ref-proxy") is None

    # a name too long for the children's names
    long_name = "p" * 60
    env.create(policy_manifest(long_name, env.ns))
    st = env.wait_status(long_name, lambda s: s.get("phase") == "Invalid", "phase Invalid")
    assert "name" in condition(st, "Ready")["message"]


def test_restart_mid_rollout_resumes_at_the_same_step(env: Env) -> None:
    steps: list[dict[str, Any]] = [
        {"weight": 5, "pause": "indefinite"},
        {"weight": 25, "pause": "indefinite"},
        {"weight": 50, "pause": "indefinite"},
        {"weight": 100},
    ]
    env.create(policy_manifest("restart", env.ns, steps=steps))
    env.wait_status("restart", lambda s: s.get("phase") == "Paused", "the rollout to start")
    merge_patch(
        env.cluster,
        policies_path(env.ns, "restart"),
        {"metadata": {"annotations": {"tierguard.io/action": "promote"}}},
    )
    before = env.wait_status(
        "restart", lambda s: s["canaryWeight"] == 25 and "lastAnalysis" in s, "step 2 with an analysis"
    )
    cm_before = get(env.cluster, f"/api/v1/namespaces/{env.ns}/configmaps/restart-proxy")

    env.operator.stop()
    time.sleep(2.5)  # longer than the interval: a restarted operator must not count missed ticks
    restarted_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    env.operator.start()

    after = env.wait_status(
        "restart", lambda s: s["lastAnalysis"]["time"] > restarted_at, "an analysis after the restart"
    )
    for key in ("phase", "currentStep", "canaryWeight", "canaryRevision", "stableRevision", "stepStartedAt",
                "rolloutStartedAt", "failedChecks", "configHash", "stable", "canary"):  # fmt: skip
        assert after.get(key) == before.get(key), (key, before.get(key), after.get(key))
    cm_after = get(env.cluster, f"/api/v1/namespaces/{env.ns}/configmaps/restart-proxy")
    assert (
        cm_after["metadata"]["resourceVersion"] == cm_before["metadata"]["resourceVersion"]
    )  # not re-rendered

    # and it goes on from there
    merge_patch(
        env.cluster,
        policies_path(env.ns, "restart"),
        {"metadata": {"annotations": {"tierguard.io/action": "promote"}}},
    )
    st = env.wait_status("restart", lambda s: s["canaryWeight"] == 50, "step 3")
    assert st["currentStep"] == 2


def test_deleting_a_policy_deletes_its_children(env: Env) -> None:
    if not env.cluster.has_controller_manager:
        pytest.skip("garbage collection needs kube-controller-manager (not built)")
    env.create(policy_manifest("doomed", env.ns))
    until(lambda: config_of(env.cluster, env.ns, "doomed"), 30, "children", env.operator.tail)
    env.cluster.request("DELETE", policies_path(env.ns, "doomed"))
    until(
        lambda: get(env.cluster, policies_path(env.ns, "doomed")) is None,
        30,
        "the policy to go (finalizer released)",
        env.operator.tail,
    )
    for path in (
        f"/api/v1/namespaces/{env.ns}/configmaps/doomed-proxy",
        f"/apis/apps/v1/namespaces/{env.ns}/deployments/doomed-proxy",
        f"/api/v1/namespaces/{env.ns}/services/doomed-proxy",
    ):
        until(lambda p=path: get(env.cluster, p) is None, 60, f"{path} garbage-collected")  # type: ignore[misc]


def _can(cluster: KubeCluster, token: str, **attrs: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    }
    _, body = cluster.request(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, token=token
    )
    return bool(body["status"]["allowed"])


def test_the_chart_role_is_minimal(env: Env) -> None:
    token = _token(env.sa_kubeconfig)
    ns = env.ns
    allowed = [
        dict(group="tierguard.io", resource="cascadepolicies", verb="watch", namespace=ns),
        dict(
            group="tierguard.io", resource="cascadepolicies", subresource="status", verb="patch", namespace=ns
        ),
        dict(group="", resource="configmaps", verb="patch", namespace=ns),
        dict(group="apps", resource="deployments", verb="create", namespace=ns),
        dict(group="", resource="events", verb="create", namespace=ns),
        dict(group="", resource="pods", verb="list", namespace=ns),
        dict(group="", resource="pods", verb="patch", namespace=ns),
    ]
    denied = [
        dict(group="", resource="secrets", verb="get", namespace=ns),
        dict(group="", resource="secrets", verb="list", namespace=ns),
        dict(group="", resource="secrets", verb="watch", namespace=ns),
        dict(group="", resource="configmaps", verb="delete", namespace=ns),
        dict(group="", resource="configmaps", verb="list", namespace=ns),
        dict(group="apps", resource="deployments", verb="delete", namespace=ns),
        dict(group="tierguard.io", resource="cascadepolicies", verb="delete", namespace=ns),
        dict(group="tierguard.io", resource="cascadepolicies", verb="create", namespace=ns),
        dict(group="tierguard.io", resource="qualityslos", verb="patch", namespace=ns),
        dict(group="tierguard.io", resource="cascadepolicies", verb="list", namespace="default"),
        dict(group="", resource="configmaps", verb="patch", namespace="default"),
        dict(group="apiextensions.k8s.io", resource="customresourcedefinitions", verb="list"),
        dict(group="", resource="namespaces", verb="list"),
        dict(group="", resource="pods", verb="create", namespace=ns),
        dict(group="", resource="pods", verb="delete", namespace=ns),
        dict(group="", resource="pods", verb="patch", namespace="default"),
    ]
    for a in allowed:
        assert _can(env.cluster, token, **a), f"the chart's role should allow {a}"
    for a in denied:
        assert not _can(env.cluster, token, **a), f"the chart's role should not allow {a}"


def test_the_operator_never_hit_a_forbidden_error(env: Env) -> None:
    """Everything above ran as the chart's ServiceAccount: no 403 in the operator's log."""
    text = env.operator.log()
    assert "Forbidden" not in text and " 403 " not in text, env.operator.tail(200)
    assert "Traceback" not in text, env.operator.tail(200)


# --------------------------------------------------------------------------- one reconcile = one tick


class Metrics:
    """What the fake provider answers: healthy by default; flip ``error_rate`` to breach."""

    def __init__(self) -> None:
        self.error_rate = 0.01
        self.escalation_rate = 0.3
        self.samples = 500.0
        self.config_share = 1.0
        self.down = False

    def provider(self) -> FakeProvider:
        def answer(q: str) -> float | None:
            if self.down:
                raise ProviderError("connection refused")
            if "tierguard_config_info" in q:
                return self.config_share
            if q.startswith("sum(increase("):
                return self.samples
            if 'outcome="error"' in q:
                return self.error_rate
            if "tierguard_escalations_total" in q:
                return self.escalation_rate
            return None

        return FakeProvider(fn=answer)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def ticks(kube_cluster: KubeCluster, crds: list[str]) -> Iterator[tuple[str, KubeApi]]:
    """A namespace with the chart's RBAC and no operator running: the test drives reconciles."""
    ns = "op-ticks"
    kubeconfig = install_chart_rbac(kube_cluster, ns)
    api = KubeApi(load_api_client(str(kubeconfig)))
    yield ns, api


def _reconciler(api: KubeApi, metrics: Metrics, clock: Clock) -> Reconciler:
    return Reconciler(api, metrics_observer(metrics.provider()), clock=clock)


def test_ticks_walk_every_step_and_promote(kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]) -> None:
    ns, api = ticks
    kube_cluster.create(slos_path(ns), slo_manifest("quality", ns))
    kube_cluster.create(policies_path(ns), policy_manifest("walk", ns, slos=["quality"], interval="10s"))
    metrics, clock = Metrics(), Clock()
    rec = _reconciler(api, metrics, clock)

    first = rec.reconcile(ns, "walk", analyse=False)
    assert first.status is not None and first.status.canary_weight == 5
    print(f"\nfirst reconcile: {first.api_calls} API calls ({dict(api.calls)})")
    weights = [first.status.canary_weight]
    calls: list[tuple[str, int]] = []
    for _ in range(10):
        clock.advance(10)
        res = rec.reconcile(ns, "walk", analyse=True)
        calls.append((type(res.decision).__name__, res.api_calls))
        assert res.status is not None
        weights.append(res.status.canary_weight)
        if res.status.phase == "Succeeded":
            break
    assert weights == [5, 10, 25, 50, 100, 0], weights
    st = status_of(kube_cluster, ns, "walk")
    assert st["phase"] == "Succeeded" and condition(st, "Ready")["status"] == "True"
    config = config_of(kube_cluster, ns, "walk")
    assert (
        config is not None
        and config.canary is None
        and config.stable.name == st["stableRevision"] != CAPABLE_ONLY
    )
    reasons = [
        e["reason"]
        for e in events_of(kube_cluster, ns, get(kube_cluster, policies_path(ns, "walk"))["metadata"]["uid"])
    ]
    assert reasons.count("StepAdvanced") == 4 and "Promoted" in reasons, reasons

    # steady state after the promotion: nothing to analyse -> one GET, no writes
    clock.advance(10)
    idle = rec.reconcile(ns, "walk", analyse=True)
    print(f"API calls per tick: {calls}; idle after promotion: {idle.api_calls}; {dict(api.calls)}")
    for _name, n in calls:
        # GET policy, PATCH status, apply ConfigMap, LIST proxy pods, PATCH the one (pending) proxy
        # pod the controller manager made for the Deployment, POST event
        assert n <= 6, calls
    assert idle.api_calls == 1


def test_ticks_hold_without_counting_and_roll_back_on_breaches(
    kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]
) -> None:
    ns, api = ticks
    kube_cluster.create(
        policies_path(ns),
        policy_manifest("breach", ns, slos=["quality"], interval="10s", failure_threshold=2),
    )
    metrics, clock = Metrics(), Clock()
    rec = _reconciler(api, metrics, clock)
    rec.reconcile(ns, "breach", analyse=False)
    clock.advance(10)
    assert rec.reconcile(ns, "breach", analyse=True).status.canary_weight == 10  # type: ignore[union-attr]

    holds: list[tuple[str | None, int]] = []
    # inconclusive intervals: never move the weight, never count as failures
    settings: list[tuple[dict[str, Any], str]] = [
        ({"down": True}, "ProviderError"),
        ({"down": False, "samples": 3.0}, "TooFewSamples"),
        ({"samples": 500.0, "config_share": 0.5}, "StaleConfig"),
    ]
    for setup, reason in settings:
        for attr, value in setup.items():
            setattr(metrics, attr, value)
        clock.advance(10)
        res = rec.reconcile(ns, "breach", analyse=True)
        st = status_of(kube_cluster, ns, "breach")
        assert condition(st, "Progressing")["reason"] == reason, st
        assert st["canaryWeight"] == 10 and st["failedChecks"] == 0
        holds.append((reason, res.api_calls))
    # the same hold again: no transition, so no event: the steady state
    clock.advance(10)
    steady = rec.reconcile(ns, "breach", analyse=True)
    assert steady.api_calls == 2, dict(api.calls)  # GET policy + PATCH status
    print(f"\nhold ticks (reason, API calls): {holds}; repeated hold: {steady.api_calls}")

    metrics.config_share = 1.0
    metrics.error_rate = 0.4  # the cheap tier breaks
    clock.advance(10)
    res = rec.reconcile(ns, "breach", analyse=True)
    st = status_of(kube_cluster, ns, "breach")
    assert (
        st["failedChecks"] == 1
        and st["canaryWeight"] == 10
        and condition(st, "Progressing")["reason"] == "CheckFailed"
    )
    clock.advance(10)
    res = rec.reconcile(ns, "breach", analyse=True)
    st = status_of(kube_cluster, ns, "breach")
    assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0 and st["failedChecks"] == 2
    assert condition(st, "Degraded")["status"] == "True" and condition(st, "Ready")["status"] == "False"
    config = config_of(kube_cluster, ns, "breach")
    assert config is not None and config.canary_weight == 0 and config.canary is None
    assert config.config_hash() == st["configHash"]
    uid = get(kube_cluster, policies_path(ns, "breach"))["metadata"]["uid"]
    (rollback,) = [e for e in events_of(kube_cluster, ns, uid) if e["reason"] == "RolledBack"]
    assert rollback["type"] == "Warning"
    assert "quality/cheap-errors" in rollback["message"] and "0.4" in rollback["message"], rollback["message"]
    breached = [c for c in st["lastAnalysis"]["checks"] if c["verdict"] == "BREACH"]
    assert breached and breached[0]["value"] == 0.4 and breached[0]["bound"] == 0.05

    # a rolled-back policy stays put
    clock.advance(10)
    assert rec.reconcile(ns, "breach", analyse=True).status.canary_weight == 0  # type: ignore[union-attr]


def test_ticks_render_every_proxy_setting_into_the_config_map(
    kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]
) -> None:
    """spec.proxy's shadow scoring and logging settings reach the proxy through the ConfigMap the
    reconciler writes, and the recorded config hash covers them."""
    ns, api = ticks
    proxy = {"shadowRate": 0.2, "shadowMaxInFlight": 3, "logPrompts": True}
    kube_cluster.create(policies_path(ns), policy_manifest("shadowed", ns, interval="10s", proxy=proxy))
    res = _reconciler(api, Metrics(), Clock()).reconcile(ns, "shadowed", analyse=False)
    assert res.status is not None and res.status.canary_weight == 5
    config = config_of(kube_cluster, ns, "shadowed")
    assert config is not None
    assert config.settings.shadow_rate == 0.2
    assert config.settings.shadow_max_in_flight == 3
    assert config.settings.log_prompts is True
    assert config.config_hash() == status_of(kube_cluster, ns, "shadowed")["configHash"]


def test_ticks_annotate_the_proxy_pods_after_each_config_map_write(
    kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]
) -> None:
    """Each ConfigMap write is followed by the config hash on the policy's proxy pods (so the
    kubelet re-reads the mounted file at once); other pods are left alone, and a pod that already
    has the hash is not patched again."""
    ns, api = ticks
    kube_cluster.create(policies_path(ns), policy_manifest("nudged", ns, interval="10s"))
    pods = f"/api/v1/namespaces/{ns}/pods"

    def pod(name: str, policy: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": "tierguard-proxy", "app.kubernetes.io/instance": policy}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                "spec": {"containers": [{"name": "proxy", "image": "tierguard:dev"}]}}  # fmt: skip

    for name, policy in (("nudged-a", "nudged"), ("nudged-b", "nudged"), ("other", "another-policy")):
        kube_cluster.create(pods, pod(name, policy))

    def hashes() -> dict[str, str | None]:
        return {
            n: (get(kube_cluster, f"{pods}/{n}")["metadata"].get("annotations") or {}).get("tierguard.io/config-hash")
            for n in ("nudged-a", "nudged-b", "other")
        }

    metrics, clock = Metrics(), Clock()
    rec = _reconciler(api, metrics, clock)
    rec.reconcile(ns, "nudged", analyse=False)
    first = status_of(kube_cluster, ns, "nudged")["configHash"]
    assert hashes() == {"nudged-a": first, "nudged-b": first, "other": None}
    clock.advance(10)
    res = rec.reconcile(ns, "nudged", analyse=True)  # the next step: a new ConfigMap, a new hash
    second = status_of(kube_cluster, ns, "nudged")["configHash"]
    assert res.status is not None and res.status.canary_weight == 10 and second != first
    assert hashes() == {"nudged-a": second, "nudged-b": second, "other": None}
    patches = api.calls.get("PATCH pods", 0)
    rec.forget((ns, "nudged"))  # the ConfigMap is applied again (same content): no pod patched again
    rec.reconcile(ns, "nudged", analyse=False)
    assert api.calls.get("PATCH pods", 0) == patches, dict(api.calls)


class InterferingApi(KubeApi):
    """Before its first status write, someone else changes the policy (a real conflict)."""

    def __init__(self, api_client: Any, cluster: KubeCluster) -> None:
        super().__init__(api_client)
        self.cluster = cluster
        self.interfered = 0

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        if path.endswith("/status") and not self.interfered:
            self.interfered += 1
            merge_patch(
                self.cluster, path.removesuffix("/status"), {"metadata": {"labels": {"touched": "yes"}}}
            )
        return super().merge_patch(path, patch)


def test_ticks_a_concurrent_change_makes_the_reconcile_read_again(
    kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]
) -> None:
    ns, api = ticks
    kube_cluster.create(policies_path(ns), policy_manifest("twins", ns, slos=["quality"], interval="10s"))
    clock = Clock()
    rec = _reconciler(api, Metrics(), clock)
    rec.reconcile(ns, "twins", analyse=False)
    clock.advance(10)
    meddling = InterferingApi(api.api_client, kube_cluster)
    res = Reconciler(meddling, metrics_observer(Metrics().provider()), clock=clock).reconcile(
        ns, "twins", analyse=True
    )
    assert meddling.interfered == 1
    assert res.status is not None and res.status.canary_weight == 10  # one step, not two
    st = status_of(kube_cluster, ns, "twins")
    assert st["currentStep"] == 1 and st["canaryWeight"] == 10
    # the retried reconcile re-read the policy: 2 GETs, a rejected and an accepted status PATCH
    assert meddling.calls["GET cascadepolicies"] == 2 and meddling.calls["PATCH cascadepolicies/status"] == 2
    uid = get(kube_cluster, policies_path(ns, "twins"))["metadata"]["uid"]
    assert [e["reason"] for e in events_of(kube_cluster, ns, uid)].count("StepAdvanced") == 1


SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def test_ticks_render_a_service_monitor_when_the_prometheus_operator_crd_exists(
    kube_cluster: KubeCluster, ticks: tuple[str, KubeApi]
) -> None:
    """With the Prometheus Operator's CRD (a stand-in with its name and group), the policy also
    gets an owned ServiceMonitor, and the chart's role is allowed to write it."""
    ns, api = ticks
    crd_path = (
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{SERVICE_MONITOR_CRD['metadata']['name']}"
    )
    server_side_apply(kube_cluster, crd_path, SERVICE_MONITOR_CRD)
    try:
        until(
            lambda: get(kube_cluster, "/apis/monitoring.coreos.com/v1") is not None,
            30,
            "the CRD to be served",
        )
        created = kube_cluster.create(policies_path(ns), policy_manifest("monitored", ns, interval="20s"))
        _reconciler(api, Metrics(), Clock()).reconcile(ns, "monitored", analyse=False)
        sm = get(
            kube_cluster, f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/monitored-proxy"
        )
        assert sm is not None
        assert sm["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "5s"}]
        svc = get(kube_cluster, f"/api/v1/namespaces/{ns}/services/monitored-proxy")
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    finally:
        kube_cluster.request("DELETE", crd_path, check=False)
