"""The operator-managed shadow rate, tick by tick on a real API server (the chart's RBAC, no
operator process): reconciles driven in-process with an in-memory metrics provider and a fake
clock, as in tests/test_operator_k8s.py. What it checks on the real objects: the canary's rate in
``status.shadow`` and the ConfigMap (the config hash unchanged), the proxy pods stamped with the
new rate even though the hash did not move (so the kubelet re-reads the file at once), and the
base rate again after an abort."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from test_operator_k8s import (  # noqa: F401  (crds is the module's fixture)
    Clock,
    Metrics,
    _reconciler,
    config_of,
    crds,
    get,
    install_chart_rbac,
    load_api_client,
    merge_patch,
    policies_path,
    policy_manifest,
    status_of,
)
from tierguard.kube.client import ACTION_ANNOTATION, KubeApi
from tierguard.localenv.kube import KubeCluster
from tierguard.metrics.fake import FakeProvider

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s]


@pytest.fixture(scope="module")
def ticks(kube_cluster: KubeCluster, crds: list[str]) -> Iterator[tuple[str, KubeApi]]:  # noqa: F811
    """A namespace of its own with the chart's RBAC and no operator: the test drives reconciles
    (test_operator_k8s's ticks namespace is installed once per session by that module)."""
    ns = "shadow-ticks"
    kubeconfig = install_chart_rbac(kube_cluster, ns)
    yield ns, KubeApi(load_api_client(str(kubeconfig)))


SHADOW_RATES = "tierguard.io/shadow-rates"
CONFIG_HASH = "tierguard.io/config-hash"


class ShadowMetrics(Metrics):
    """Healthy checks, plus the canary's accepted answers per second and the cost per shadow call."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 2.0
        self.cost = 1e-4

    def provider(self) -> FakeProvider:
        base = super().provider()
        assert base.fn is not None
        checks = base.fn

        def answer(q: str) -> float | None:
            if "tierguard_shadow_cost_usd_total" in q and "tierguard_shadow_samples_total" in q:
                return self.cost
            if q.startswith("sum(rate(tierguard_requests_total") and 'status="ok"' in q:
                return self.accepted
            if q.endswith("* 3600"):
                return None  # the stable (capable-only) has no shadow spend
            return checks(q)  # type: ignore[return-value]

        return FakeProvider(fn=answer)


def test_ticks_raise_the_canary_rate_stamp_the_pods_and_return_to_base(
    kube_cluster: KubeCluster,
    ticks: tuple[str, KubeApi],
) -> None:
    ns, api = ticks
    name = "shadow-ticks"
    manifest = policy_manifest(
        name,
        ns,
        interval="10s",
        min_samples=10,
        steps=[{"weight": 5, "pause": "indefinite"}, {"weight": 100}],
        proxy={"shadowRate": 0.01, "shadowBudget": {"maxSpendPerHour": 10.0}},
    )
    kube_cluster.create(policies_path(ns), manifest)
    pods = f"/api/v1/namespaces/{ns}/pods"
    labels = {"app.kubernetes.io/name": "tierguard-proxy", "app.kubernetes.io/instance": name}
    for pod in ("shadow-ticks-a", "shadow-ticks-b"):
        kube_cluster.create(
            pods,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": labels},
                "spec": {"containers": [{"name": "proxy", "image": "tierguard:dev"}]},
            },
        )

    def stamps() -> list[dict[str, Any]]:
        out = []
        for pod in ("shadow-ticks-a", "shadow-ticks-b"):
            ann = get(kube_cluster, f"{pods}/{pod}")["metadata"].get("annotations") or {}
            out.append({k: ann[k] for k in (CONFIG_HASH, SHADOW_RATES) if k in ann})
        return out

    metrics, clock = ShadowMetrics(), Clock()
    rec = _reconciler(api, metrics, clock)
    rec.reconcile(ns, name, analyse=False)
    st = status_of(kube_cluster, ns, name)
    canary, config_hash = st["canaryRevision"], st["configHash"]
    assert st["shadow"]["reason"] == "Base" and st["shadow"]["rate"] == 0.01
    assert config_of(kube_cluster, ns, name).shadow_rates == {}  # type: ignore[union-attr]
    assert stamps() == [{CONFIG_HASH: config_hash}] * 2

    # 2 accepted/s x 10 s = 20 per interval: 1.2 x 10 / 20 = 0.6 (0.6 x 2 x 0.36 = 0.432 USD/h)
    clock.advance(10)
    rec.reconcile(ns, name, analyse=True)
    st = status_of(kube_cluster, ns, name)
    assert st["phase"] == "Paused" and st["lastAnalysis"]["result"] == "Pass"
    shadow = st["shadow"]
    assert (shadow["revision"], shadow["rate"], shadow["reason"]) == (canary, 0.6, "RaisedForSamples")
    assert shadow["expectedSpendPerHour"] == pytest.approx(0.432)
    config = config_of(kube_cluster, ns, name)
    assert config is not None and config.shadow_rates == {canary: 0.6}
    assert st["configHash"] == config_hash == config.config_hash()  # the interval is not voided
    assert stamps() == [{CONFIG_HASH: config_hash, SHADOW_RATES: f"{canary}=0.6"}] * 2

    # twice the traffic: half the rate, and the pods are stamped again with the same hash
    metrics.accepted = 4.0
    clock.advance(10)
    rec.reconcile(ns, name, analyse=True)
    st = status_of(kube_cluster, ns, name)
    assert st["shadow"]["rate"] == 0.3 and st["configHash"] == config_hash
    assert config_of(kube_cluster, ns, name).shadow_rates == {canary: 0.3}  # type: ignore[union-attr]
    assert stamps() == [{CONFIG_HASH: config_hash, SHADOW_RATES: f"{canary}=0.3"}] * 2

    # Prometheus goes away: the base rate, never a higher one
    metrics.down = True
    clock.advance(10)
    rec.reconcile(ns, name, analyse=True)
    st = status_of(kube_cluster, ns, name)
    assert (st["shadow"]["reason"], st["shadow"]["rate"]) == ("ProviderError", 0.01)
    assert config_of(kube_cluster, ns, name).shadow_rates == {}  # type: ignore[union-attr]
    assert stamps() == [{CONFIG_HASH: config_hash}] * 2
    metrics.down = False
    clock.advance(10)
    rec.reconcile(ns, name, analyse=True)
    assert status_of(kube_cluster, ns, name)["shadow"]["rate"] == 0.3

    # an abort ends the rollout: the base rate for every revision, the stamp removed
    merge_patch(
        kube_cluster, policies_path(ns, name), {"metadata": {"annotations": {ACTION_ANNOTATION: "abort"}}}
    )
    rec.reconcile(ns, name, analyse=False)
    st = status_of(kube_cluster, ns, name)
    assert st["phase"] == "Aborted"
    assert (st["shadow"]["reason"], st["shadow"]["rate"]) == ("Base", 0.01) and "revision" not in st["shadow"]
    assert config_of(kube_cluster, ns, name).shadow_rates == {}  # type: ignore[union-attr]
    assert all(SHADOW_RATES not in s for s in stamps())
