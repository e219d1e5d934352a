"""Smoke tests for the real-component test infrastructure (tests/infra).

They start a real etcd + kube-apiserver (+ kube-controller-manager) and a real
Prometheus, and check the behaviour other integration tests rely on: admin
access, ServiceAccount kubeconfigs limited by RBAC, garbage collection, helm,
and Prometheus scraping with run-time target changes.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tierguard.localenv.kube import KubeApiError, KubeCluster
from tierguard.localenv.ports import free_port
from tierguard.localenv.prometheus import PrometheusServer

# Registers the fixtures even if no conftest does (a no-op when one already has).
pytest_plugins = ["infra.fixtures"]

pytestmark = pytest.mark.slow


def _until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _token(kubeconfig: Path) -> str:
    import json

    return str(json.loads(kubeconfig.read_text())["users"][0]["user"]["token"])


# --------------------------------------------------------------------------- kube


@pytest.mark.k8s
def test_admin_creates_namespace_and_configmap(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    from kubernetes import client

    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "smoke"},
        "data": {"tier": "small"},
    }
    created = kube_cluster.create(f"/api/v1/namespaces/{kube_namespace}/configmaps", cm)
    assert created["metadata"]["uid"]

    # Read it back with the official client through the written admin kubeconfig.
    with kube_cluster.api_client() as api:
        got = client.CoreV1Api(api).read_namespaced_config_map("smoke", kube_namespace)
    assert got.data == {"tier": "small"}
    assert got.metadata is not None
    assert got.metadata.uid == created["metadata"]["uid"]

    # A second create of the same name is a real conflict from the API server.
    with pytest.raises(KubeApiError) as exc:
        kube_cluster.create(f"/api/v1/namespaces/{kube_namespace}/configmaps", cm)
    assert exc.value.status == 409

    version = kube_cluster.request("GET", "/version")[1]
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")


@pytest.mark.k8s
def test_service_account_is_forbidden_until_role_is_bound(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ns = kube_namespace
    kubeconfig = kube_cluster.kubeconfig_for_service_account(ns, "operator")
    token = _token(kubeconfig)

    # The token authenticates as the ServiceAccount ...
    status, review = kube_cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert status == 201
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:operator"

    # ... which has no permissions yet.
    status, body = kube_cluster.request(
        "GET", f"/api/v1/namespaces/{ns}/configmaps", token=token, check=False
    )
    assert status == 403, body
    assert body["reason"] == "Forbidden"
    with kube_cluster.api_client(kubeconfig) as api, pytest.raises(ApiException) as exc:
        client.CoreV1Api(api).list_namespaced_config_map(ns)
    assert exc.value.status == 403

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "configmap-editor", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "operator-configmap-editor", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-editor"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
    }
    kube_cluster.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", role)
    kube_cluster.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", binding)

    def allowed() -> bool:
        status, _ = kube_cluster.request(
            "GET", f"/api/v1/namespaces/{ns}/configmaps", token=token, check=False
        )
        return status == 200

    _until(allowed, 15, "the RoleBinding to take effect")

    # Now the official client, driven by the token kubeconfig, can do what the Role allows ...
    with kube_cluster.api_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-sa"), data={"k": "v"})
        )
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(ns).items if cm.metadata}
        assert "from-sa" in names
        # ... and nothing more: no delete verb, no secrets, no other namespace.
        for call in (
            lambda: core.delete_namespaced_config_map("from-sa", ns),
            lambda: core.list_namespaced_secret(ns),
            lambda: core.list_namespaced_config_map("default"),
        ):
            with pytest.raises(ApiException) as exc:
                call()
            assert exc.value.status == 403


@pytest.mark.k8s
def test_controller_manager_runs_deployments_and_garbage_collection(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    if not kube_cluster.has_controller_manager:
        pytest.skip("kube-controller-manager is not running (not built, or TIERGUARD_NO_KCM=1)")
    ns = kube_namespace
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
        },
    }
    created = kube_cluster.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deploy)

    def replicasets() -> list[dict]:
        return kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets")[1]["items"]

    _until(lambda: len(replicasets()) == 1, 60, "the Deployment controller to create a ReplicaSet")
    rs = replicasets()[0]
    assert rs["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    # Owner-reference garbage collection: deleting the owner removes the dependent.
    owner = kube_cluster.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
    )
    kube_cluster.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
        },
    )
    kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/owner")

    def dependent_gone() -> bool:
        status, _ = kube_cluster.request("GET", f"/api/v1/namespaces/{ns}/configmaps/dependent", check=False)
        return status == 404

    _until(dependent_gone, 60, "garbage collection of the dependent ConfigMap")


@pytest.mark.k8s
def test_helm_installs_a_chart(kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    res = kube_cluster.helm(
        "install", "rel", str(chart), "-n", kube_namespace, "--set", "greeting=hi", "--wait"
    )
    assert "STATUS: deployed" in res.stdout
    _, cm = kube_cluster.request("GET", f"/api/v1/namespaces/{kube_namespace}/configmaps/rel-cm")
    assert cm["data"] == {"greeting": "hi"}
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


# --------------------------------------------------------------------------- prometheus


class _Exporter:
    """A minimal /metrics endpoint serving a settable gauge."""

    def __init__(self) -> None:
        self.value = 1.0
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE smoke_value gauge\nsmoke_value {exporter.value}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[_Exporter]:
    e = _Exporter()
    yield e
    e.close()


@pytest.mark.prometheus
def test_prometheus_scrapes_itself(prometheus_factory: Callable[..., PrometheusServer]) -> None:
    prom = prometheus_factory(scrape_self=True)
    up = prom.wait_for_value(
        f'up{{job="prometheus",instance="{prom.address}"}}', lambda v: v == 1, timeout=30
    )
    assert up == 1.0
    # Its own metrics are stored and queryable.
    assert prom.wait_for_value('count(prometheus_build_info{job="prometheus"})', timeout=10) == 1.0


@pytest.mark.prometheus
def test_prometheus_targets_change_at_run_time(
    prometheus_server: PrometheusServer, exporter: _Exporter
) -> None:
    prom = prometheus_server
    assert prom.query("up") == []  # starts with no targets

    exporter.value = 7
    prom.set_targets([(exporter.address, {"tier": "small"})])
    assert prom.wait_for_value('smoke_value{tier="small"}', lambda v: v == 7, timeout=30) == 7
    exporter.value = 9
    assert prom.wait_for_value('smoke_value{tier="small"}', lambda v: v == 9, timeout=30) == 9

    # A target nobody listens on is scraped as down.
    dead = f"127.0.0.1:{free_port()}"
    prom.set_targets([(exporter.address, {"tier": "small"}), (dead, {"tier": "gone"})])
    assert prom.wait_for_value(f'up{{instance="{dead}"}}', lambda v: v == 0, timeout=30) == 0
    assert prom.query_value(f'up{{instance="{exporter.address}"}}') == 1
