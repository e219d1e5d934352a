"""GitOps health: what kstatus (Flux, ``kubectl wait``, cli-utils) and the shipped Argo CD health
check read from CascadePolicy objects the operator wrote on a real API server, for every phase.

The operator's reconciler runs in-process, one tick at a time, as the chart's ServiceAccount, with a
fake metrics provider and clock (as in test_operator_k8s.py). The objects are then read back from the
API server and given to

* ``kstatus-check``: a small Go program around ``sigs.k8s.io/cli-utils/pkg/kstatus/status``
  (``tests/k8senv/kstatus``, built by ``tests/k8senv/kstatus/build.sh``), and
* ``examples/gitops/argocd/cascadepolicy-health.lua`` under a real Lua 5.4 interpreter, the way
  Argo CD runs it (the object as the global ``obj``; the chunk returns ``{status, message}``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from needs import unavailable
from test_operator_k8s import (
    Clock,
    Metrics,
    _reconciler,
    condition,
    events_of,
    get,
    install_chart_rbac,
    merge_patch,
    policies_path,
    policy_manifest,
    slo_manifest,
    slos_path,
)
from tierguard.kube.client import ACTION_ANNOTATION, KubeApi, load_api_client
from tierguard.localenv.binaries import bin_dir
from tierguard.localenv.kube import KubeCluster

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s]

REPO = Path(__file__).resolve().parent.parent
HEALTH_LUA = REPO / "examples" / "gitops" / "argocd" / "cascadepolicy-health.lua"
ARGOCD_CM = REPO / "examples" / "gitops" / "argocd" / "argocd-cm-patch.yaml"
KSTATUS_BUILD = REPO / "tests" / "k8senv" / "kstatus" / "build.sh"
NS = "gitops-health"

# phase -> (kstatus status, Argo CD health)
EXPECTED = {
    "progressing": ("InProgress", "Progressing"),
    "paused": ("InProgress", "Suspended"),
    "succeeded": ("Current", "Healthy"),
    "rolled-back": ("Failed", "Degraded"),
    "stalled": ("Failed", "Degraded"),  # past its progress deadline (no data)
    "aborted": ("Failed", "Degraded"),
    "invalid": ("Failed", "Degraded"),
    "fixed": ("InProgress", "Progressing"),
    "unobserved": ("InProgress", "Progressing"),
}


def kstatus_binary() -> Path:
    path = bin_dir() / "kstatus-check"
    res = subprocess.run(["bash", str(KSTATUS_BUILD)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not path.is_file():
        unavailable(f"kstatus-check could not be built: {res.stderr[-2000:]}")
    return path


def lua_binary() -> str:
    for name in ("lua5.4", "lua"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("no Lua interpreter (apt-get install lua5.4)")
    raise AssertionError("unreachable")


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua table constructor (what Argo CD hands its health scripts)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this content
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def argocd_health(lua: str, obj: dict[str, Any], tmp: Path) -> tuple[str, str]:
    driver = tmp / "driver.lua"
    driver.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local hs = dofile({json.dumps(str(HEALTH_LUA))})\n"
        'io.write(hs.status, "\\t", hs.message or "")\n'
    )
    res = subprocess.run([lua, str(driver)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    status, _, message = res.stdout.partition("\t")
    return status, message


@pytest.fixture(scope="module")
def objects(kube_cluster: KubeCluster) -> Iterator[dict[str, dict[str, Any]]]:
    """One CascadePolicy per phase, written by the operator's reconciler; read back from the API."""
    from test_operator_k8s import install_crds

    install_crds(kube_cluster)
    kubeconfig = install_chart_rbac(kube_cluster, NS)
    api = KubeApi(load_api_client(str(kubeconfig)))
    kube_cluster.create(slos_path(NS), slo_manifest("quality", NS))
    metrics, clock = Metrics(), Clock()
    rec = _reconciler(api, metrics, clock)

    def create(name: str, **kw: Any) -> None:
        kube_cluster.create(policies_path(NS), policy_manifest(name, NS, interval="10s", **kw))
        rec.reconcile(NS, name, analyse=False)

    def tick(*names: str) -> None:
        clock.advance(10)
        for name in names:
            rec.reconcile(NS, name, analyse=True)

    create("progressing", slos=["quality"])
    create("succeeded", slos=["quality"])
    create("paused", slos=["quality"], steps=[{"weight": 10, "pause": "indefinite"}, {"weight": 100}])
    create("rolled-back", slos=["quality"], failure_threshold=1)
    create("aborted", slos=["quality"])
    create("invalid", slos=["not-there"])
    create("fixed", slos=["not-there-yet"])
    create("unobserved", slos=["quality"])
    stalled = policy_manifest("stalled", NS, interval="10s", slos=["quality"])
    stalled["spec"]["rollout"]["progressDeadline"] = "30s"
    kube_cluster.create(policies_path(NS), stalled)
    rec.reconcile(NS, "stalled", analyse=False)
    tick("progressing", "succeeded", "paused", "aborted")
    for _ in range(5):
        tick("succeeded", "paused")
    merge_patch(
        kube_cluster,
        policies_path(NS, "aborted"),
        {"metadata": {"annotations": {ACTION_ANNOTATION: "abort"}}},
    )
    tick("aborted")
    metrics.error_rate = 0.5
    tick("rolled-back")
    metrics.error_rate = 0.01
    kube_cluster.create(slos_path(NS), slo_manifest("not-there-yet", NS))
    tick("fixed", "invalid")
    metrics.samples = 3.0  # too few samples: holds, until the deadline passes
    for _ in range(7):  # stalled from the 4th on
        tick("stalled")
    metrics.samples = 500.0
    rec.reconcile(NS, "fixed", analyse=False)
    # a spec change the operator has not seen yet (no reconcile after it)
    merge_patch(
        kube_cluster,
        policies_path(NS, "unobserved"),
        {"spec": {"tiers": [{**policy_manifest("x", NS)["spec"]["tiers"][0], "confidence": {"threshold": 0.7}},
                            policy_manifest("x", NS)["spec"]["tiers"][1]]}},
    )  # fmt: skip
    yield {name: get(kube_cluster, policies_path(NS, name)) for name in EXPECTED}


def test_a_stalled_rollout_warns_once_and_does_not_repeat_its_hold_events(
    kube_cluster: KubeCluster, objects: dict[str, dict[str, Any]]
) -> None:
    reasons = [e["reason"] for e in events_of(kube_cluster, NS, objects["stalled"]["metadata"]["uid"])]
    assert reasons.count("ProgressDeadlineExceeded") == 1, reasons
    assert reasons.count("HoldTooFewSamples") == 1, reasons


def test_the_phases_the_objects_are_in(objects: dict[str, dict[str, Any]]) -> None:
    phases = {name: (obj.get("status") or {}).get("phase") for name, obj in objects.items()}
    assert phases == {
        "progressing": "Progressing",
        "paused": "Paused",
        "succeeded": "Succeeded",
        "rolled-back": "RolledBack",
        "stalled": "Progressing",
        "aborted": "Aborted",
        "invalid": "Invalid",
        "fixed": "Progressing",
        "unobserved": "Progressing",
    }, {n: json.dumps(o.get("status"))[:600] for n, o in objects.items()}
    for name, obj in objects.items():
        st = obj["status"]
        if name != "unobserved":
            assert st["observedGeneration"] == obj["metadata"]["generation"], name
        for c in st["conditions"]:
            assert c["observedGeneration"] == st["observedGeneration"], (name, c)
    stalled = {c["type"]: (c["status"], c["reason"]) for c in objects["stalled"]["status"]["conditions"]}
    assert stalled["Progressing"] == stalled["Reconciling"] == ("False", "ProgressDeadlineExceeded"), stalled
    assert stalled["Degraded"] == stalled["Stalled"] == ("True", "ProgressDeadlineExceeded"), stalled
    assert (
        objects["unobserved"]["metadata"]["generation"]
        > objects["unobserved"]["status"]["observedGeneration"]
    )
    ready = condition(objects["succeeded"]["status"], "Ready")
    assert ready["status"] == "True"
    for name in ("invalid", "rolled-back", "aborted"):
        st = objects[name]["status"]
        assert condition(st, "Stalled")["status"] == "True", (name, st["conditions"])
        assert condition(st, "Reconciling")["status"] == "False", (name, st["conditions"])


def test_kstatus_reads_every_phase(objects: dict[str, dict[str, Any]]) -> None:
    binary = kstatus_binary()
    res = subprocess.run(
        [str(binary)], input=json.dumps(list(objects.values())), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    got = {r["name"]: r["status"] for r in json.loads(res.stdout)}
    print("\nkstatus:", json.dumps(json.loads(res.stdout), indent=1))
    assert got == {name: want[0] for name, want in EXPECTED.items()}


def test_the_argocd_health_check_reads_every_phase(
    objects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    lua = lua_binary()
    got = {name: argocd_health(lua, obj, tmp_path) for name, obj in objects.items()}
    print("\nArgo CD:", json.dumps(got, indent=1))
    assert {name: g[0] for name, g in got.items()} == {name: want[1] for name, want in EXPECTED.items()}
    assert "RolledBack" in got["rolled-back"][1] and "InvalidSpec" in got["invalid"][1]
    assert "not-there" in got["invalid"][1]
    # no status at all yet: Progressing
    assert argocd_health(lua, {"metadata": {"name": "new", "generation": 1}}, tmp_path)[0] == "Progressing"


def test_the_argocd_cm_patch_ships_the_same_script() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    key = "resource.customizations.health.tierguard.io_CascadePolicy"
    assert cm["data"][key] == HEALTH_LUA.read_text()
