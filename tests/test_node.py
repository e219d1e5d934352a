"""The single-node cluster itself (tests/infra/node.py): a pod from the image built from the
Dockerfile runs under the kubelet, passes its readiness probe, and its Service routes from the host."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from infra.node import NODE_NAME, NodeCluster
from test_operator_k8s import until

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.node]

NS = "node-smoke"


def _web(image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = {"app": "web"}
    container = {
        "name": "web",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-m", "http.server", "8000"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": NS, "labels": labels},
        "spec": {"containers": [container], "automountServiceAccountToken": False},
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    return pod, svc


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except OSError:
        return False


def test_a_pod_from_the_built_image_runs_and_its_service_routes(node_cluster: NodeCluster) -> None:
    node = node_cluster
    assert node.cluster is not None and node.images is not None
    node.cluster.create_namespace(NS)
    pod, svc = _web(node.images.app.ref)
    node.cluster.create(f"/api/v1/namespaces/{NS}/pods", pod)
    node.cluster.create(f"/api/v1/namespaces/{NS}/services", svc)

    def ready() -> dict[str, Any] | None:
        _, p = node.request("GET", f"/api/v1/namespaces/{NS}/pods/web")
        conds = {c["type"]: c["status"] for c in (p["status"].get("conditions") or [])}
        return p if conds.get("Ready") == "True" else None

    p = until(ready, 90, "the pod Ready", lambda: node.kubectl("describe", "pod", "-n", NS, "web").stdout)
    assert p["spec"]["nodeName"] == NODE_NAME and p["status"]["podIP"].startswith("10.244.0.")
    # the image runs as its own non-root user
    assert p["status"]["containerStatuses"][0]["ready"] is True
    _, s = node.request("GET", f"/api/v1/namespaces/{NS}/services/web")

    def routed() -> bool:  # once kube-proxy has written the Service's rules
        with urllib.request.urlopen(f"http://{s['spec']['clusterIP']}/", timeout=5) as r:
            return r.status == 200 and b"Directory listing" in r.read()

    until(lambda: _quietly(routed), 30, "the Service to route to the pod")
    logs = node.kubectl("logs", "-n", NS, "web").stderr + node.kubectl("logs", "-n", NS, "web").stdout
    assert "GET / HTTP" in logs  # the API server reaches the kubelet for logs
    node.request("DELETE", f"/api/v1/namespaces/{NS}/pods/web?gracePeriodSeconds=0")
