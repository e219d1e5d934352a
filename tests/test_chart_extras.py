"""The chart's values schema, the operator's restricted pod security, the optional ServiceMonitor
for the proxies and the Grafana dashboard ConfigMap (rendered and linted with the pinned helm)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_helm import CHART, by_kind, helm, render
from tierguard import dashboard

__all__ = ["helm"]  # the module-scoped fixture, shared with test_helm.py

REPO = Path(__file__).resolve().parent.parent


def test_the_chart_dashboard_is_the_generated_one() -> None:
    shipped = (REPO / dashboard.CHART_FILE).read_text()
    assert shipped == dashboard.render(), "regenerate it: python -m tierguard.dashboard --write"


def test_every_panel_filters_by_namespace_and_policy_and_has_a_unique_id() -> None:
    board = dashboard.grafana_dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) == len(dashboard.PANELS)
    for p in board["panels"]:
        (target,) = p["targets"]
        assert '"$namespace"' in target["expr"] and '"$policy"' in target["expr"], p["title"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "policy"]
    concrete = dashboard.concrete(board["panels"][0]["targets"][0]["expr"], window="30s")
    assert "$" not in concrete and "[30s]" in concrete


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("watch.allNamespaces=yes", "/watch/allNamespaces': got string, want boolean"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
    ],
)
def test_helm_lint_rejects_a_wrong_value(helm: Any, setting: str, complaint: str) -> None:
    res = helm("lint", "--strict", str(CHART), "--set", setting, check=False)
    assert res.returncode != 0, res.stdout
    assert complaint in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.slow
def test_the_operator_pod_meets_the_restricted_pod_security_standard(helm: Any) -> None:
    (dep,) = by_kind(render(helm, "prometheus.url=http://prom:9090"), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # writable scratch only


@pytest.mark.slow
def test_service_monitor_is_optional_and_labelled(helm: Any) -> None:
    assert not by_kind(render(helm, "prometheus.url=http://p:9090"), "ServiceMonitor")
    docs = render(helm, "prometheus.url=http://p:9090", "serviceMonitor.enabled=true",
                  "serviceMonitor.labels.release=kps", "watch.namespace=apps")  # fmt: skip
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "apps" and sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "tierguard-proxy"}}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    docs = render(
        helm, "prometheus.url=http://p:9090", "serviceMonitor.enabled=true", "watch.allNamespaces=true"
    )
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.slow
def test_grafana_dashboard_config_map_for_the_sidecar(helm: Any) -> None:
    docs = render(helm, "prometheus.url=http://p:9090")
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["tierguard.json"]) == dashboard.grafana_dashboard()
    assert not by_kind(
        render(helm, "prometheus.url=http://p:9090", "grafana.dashboard.enabled=false"), "ConfigMap"
    )


def _undeclared(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of values.yaml that a closed object of the schema does not declare."""
    if not isinstance(values, dict) or schema.get("type") != "object":
        return []
    props = schema.get("properties", {})
    out = []
    for key, value in values.items():
        if key not in props:
            if schema.get("additionalProperties") is False:
                out.append(f"{path}{key}")
            continue
        out += _undeclared(value, props[key], f"{path}{key}.")
    return out


def test_every_default_value_is_declared_in_the_schema() -> None:
    """A value added to values.yaml without the schema would make every install fail."""
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _undeclared(values, schema) == [], "declare them in charts/tierguard/values.schema.json"
