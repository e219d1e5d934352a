"""The Helm chart: CRDs in sync with crds/, lint, rendering in both watch modes, a real install.

helm is the binary pinned and built by tests/k8senv (see tests/infra/binaries.py).
"""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierguard.localenv.binaries import MissingBinaryError, ensure_binaries
from tierguard.localenv.kube import KubeCluster

pytest_plugins = ["infra.fixtures"]

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "tierguard"
CRDS = REPO / "crds"


def test_chart_crds_are_the_generated_crds() -> None:
    """charts/tierguard/crds/ must be a byte-for-byte copy of crds/ (cp crds/*.yaml charts/tierguard/crds/)."""
    top = sorted(p.name for p in CRDS.glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top, "crds/ is empty"
    assert chart == top, f"chart CRDs {chart} != crds/ {top}: copy crds/*.yaml into charts/tierguard/crds/"
    for name in top:
        assert filecmp.cmp(CRDS / name, CHART / "crds" / name, shallow=False), (
            f"charts/tierguard/crds/{name} differs from crds/{name}: copy it again"
        )


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    try:
        binary = ensure_binaries(["helm"])["helm"]
    except MissingBinaryError as err:
        pytest.fail(str(err), pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    return run


def render(helm: Any, *sets: str, namespace: str = "tierguard-system") -> list[dict[str, Any]]:
    args = ["template", "tg", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    (dep,) = by_kind(docs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


@pytest.mark.slow
def test_helm_lint(helm: Any) -> None:
    res = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in res.stdout, res.stdout


@pytest.mark.slow
def test_namespaced_install_renders_a_role_for_the_watched_namespace(helm: Any) -> None:
    docs = render(helm, "watch.namespace=apps", "prometheus.url=http://prom:9090")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Role", "RoleBinding", "ServiceAccount"], kinds  # + dashboard
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "apps"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tg-tierguard", "namespace": "tierguard-system"}
    ]
    args = operator_args(docs)
    assert args[0] == "operator"
    assert (
        "--namespace=apps" in args and "--prometheus-url=http://prom:9090" in args and "--standalone" in args
    )
    assert "--prometheus-timeout=10" in args
    assert "--prometheus-timeout=2.5" in operator_args(render(helm, "prometheus.timeout=2.5"))
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tg-tierguard"
    assert pod["containers"][0]["image"] == "ghcr.io/tierguard/tierguard:0.1.0"  # appVersion by default
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.slow
def test_default_watch_namespace_is_the_release_namespace(helm: Any) -> None:
    docs = render(helm, namespace="team-a")
    assert "--namespace=team-a" in operator_args(docs)
    assert by_kind(docs, "Role")[0]["metadata"]["namespace"] == "team-a"


@pytest.mark.slow
def test_all_namespaces_renders_a_cluster_role_with_the_same_rules(helm: Any) -> None:
    cluster_docs = render(helm, "watch.allNamespaces=true")
    assert not by_kind(cluster_docs, "Role") and not by_kind(cluster_docs, "RoleBinding")
    (cr,) = by_kind(cluster_docs, "ClusterRole")
    (crb,) = by_kind(cluster_docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == cr["metadata"]["name"]
    args = operator_args(cluster_docs)
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    (role,) = by_kind(render(helm), "Role")
    assert cr["rules"] == role["rules"]


@pytest.mark.slow
def test_role_never_grants_deletes_secrets_or_wildcards(helm: Any) -> None:
    (role,) = by_kind(render(helm), "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], (
            rule
        )
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), (
            rule
        )
        assert "secrets" not in rule["resources"], rule


@pytest.mark.slow
def test_two_replicas_elect_a_leader_with_a_lease_role_of_their_own(helm: Any) -> None:
    docs = render(helm, "replicaCount=2", "watch.namespace=apps")
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    args = operator_args(docs)
    assert "--leader-elect" in args and "--lease-name=tg-tierguard" in args
    assert {"--lease-duration=15", "--renew-deadline=10", "--retry-period=2"} <= set(args)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "Role")}
    lease = roles["tg-tierguard-leader-election"]
    assert lease["metadata"]["namespace"] == "tierguard-system"  # the release's, not the watched one
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["tg-tierguard"],
         "verbs": ["get", "patch"]},
    ]  # fmt: skip
    bindings = {b["metadata"]["name"]: b for b in by_kind(docs, "RoleBinding")}
    assert bindings["tg-tierguard-leader-election"]["roleRef"]["name"] == "tg-tierguard-leader-election"
    # one replica: no election, no Lease role (the default render above)
    assert "--leader-elect" not in operator_args(render(helm))
    assert len(by_kind(render(helm, "leaderElection.enabled=true"), "Role")) == 2


@pytest.mark.slow
def test_values_for_image_extra_args_and_rbac(helm: Any) -> None:
    docs = render(
        helm,
        "image.repository=registry.example/tg",
        "image.tag=1.2.3",
        "extraArgs={--verbose}",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
        "rbac.create=false",
    )
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"]  # the dashboard stays
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/tg:1.2.3"
    assert pod["serviceAccountName"] == "existing"
    assert operator_args(docs)[-1] == "--verbose"


@pytest.mark.slow
def test_missing_prometheus_url_is_a_clear_error(helm: Any) -> None:
    res = helm("template", "tg", str(CHART), "--set", "prometheus.url=", check=False)
    assert res.returncode != 0 and "prometheus.url is required" in res.stderr, res.stderr
    for bad in ("prometheus.timeout=0", "prometheus.timeout=soon"):
        res = helm("template", "tg", str(CHART), "--set", bad, check=False)
        assert res.returncode != 0 and "timeout" in res.stderr, (bad, res.stderr)


@pytest.mark.slow
@pytest.mark.k8s
def test_helm_install_on_a_real_api_server(kube_cluster: KubeCluster) -> None:
    """A real install: CRDs from the chart (or already there), RBAC objects, the operator Deployment."""
    ns = "helm-install"
    kube_cluster.create_namespace(ns)
    kube_cluster.helm(
        "install", "tg", str(CHART), "--namespace", ns, "--set", "prometheus.url=http://prom:9090"
    )
    try:
        for crd in ("cascadepolicies.tierguard.io", "qualityslos.tierguard.io"):
            kube_cluster.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        _, dep = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/tg-tierguard")
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "tg-tierguard"
        kube_cluster.request("GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/tg-tierguard")
        kube_cluster.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/tg-tierguard")
        res = kube_cluster.helm("status", "tg", "--namespace", ns)
        assert "STATUS: deployed" in res.stdout
    finally:
        kube_cluster.helm("uninstall", "tg", "--namespace", ns, check=False)
