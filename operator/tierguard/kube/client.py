"""A small synchronous Kubernetes REST client on top of the ``kubernetes`` package's auth and TLS.

The operator needs a handful of verbs on a handful of paths (server-side apply of children, a
status merge-patch with a resourceVersion precondition, events, discovery); raw paths keep that
explicit and let the operator count its own API calls.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any
from urllib.parse import quote, urlencode

from .. import API_GROUP, API_VERSION

FIELD_MANAGER = "tierguard-operator"
PLURAL_POLICIES = "cascadepolicies"
PLURAL_SLOS = "qualityslos"
ACTION_ANNOTATION = f"{API_GROUP}/action"
"""Set on a CascadePolicy (by ``tierguard promote|abort|resume``, GitOps or ``kubectl annotate``)
to ask the operator for a manual action; the operator removes it when it acts."""


class KubeError(Exception):
    """A non-2xx answer from the API server (or no answer at all: status 0)."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str = "") -> None:
        self.method, self.path, self.status, self.reason, self.message = method, path, status, reason, message
        super().__init__(f"{method} {path}: HTTP {status} {reason}: {message}".rstrip(": "))

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: the given kubeconfig, else in-cluster, else ~/.kube/config
    (or $KUBECONFIG)."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        pass
    return config.new_client_from_config(context=context)


def policy_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{quote(namespace)}/{PLURAL_POLICIES}"
    if name is not None:
        path += f"/{quote(name)}"
        if sub:
            path += f"/{sub}"
    return path


def slo_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{quote(namespace)}/{PLURAL_SLOS}"
    return f"{path}/{quote(name)}" if name is not None else path


_CORE_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Event": "events",
    "ServiceAccount": "serviceaccounts",
}
_PLURALS = {
    "Deployment": "deployments",
    "ServiceMonitor": "servicemonitors",
    "CronJob": "cronjobs",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    **_CORE_PLURALS,
}


def object_path(obj: dict[str, Any]) -> str:
    """The path of a namespaced object (by apiVersion/kind/metadata)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    meta = obj["metadata"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{quote(meta['namespace'])}/{_PLURALS[kind]}/{quote(meta['name'])}"


class KubeApi:
    """Thread-safe thin client; ``calls`` counts requests by ``"VERB kind"``."""

    def __init__(self, api_client: Any, timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type  # JSON (or YAML's JSON subset): serialised by the client
        full = path + ("?" + urlencode(query) if query else "")
        _, url, headers, _, _ = self.api_client.param_serialize(
            method=method, resource_path=full, header_params=headers, auth_settings=["BearerToken"]
        )
        with self._lock:
            self.calls[f"{method} {_kind_of(path)}"] += 1
        try:
            resp = self.api_client.call_api(method, url, header_params=headers, body=body,
                                            _request_timeout=self.timeout)  # fmt: skip
            payload = resp.read()
        except Exception as err:  # urllib3 connection errors and the like
            raise KubeError(method, path, 0, "unreachable", str(err)) from None
        status = int(resp.status)
        decoded: Any = None
        if payload:
            try:
                decoded = json.loads(payload)
            except ValueError:
                decoded = payload.decode(errors="replace")
        if not 200 <= status < 300:
            reason = decoded.get("reason", "") if isinstance(decoded, dict) else ""
            message = decoded.get("message", "") if isinstance(decoded, dict) else str(decoded or "")
            raise KubeError(method, path, status, reason, message)
        return decoded

    # --- verbs ------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def apply(self, obj: dict[str, Any]) -> Any:
        """Server-side apply (create or update), forcing ownership of the fields we set."""
        return self.request(
            "PATCH",
            object_path(obj),
            obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )

    def has_resource(self, group: str, version: str, plural: str) -> bool:
        """Discovery: is ``plural`` served under ``group/version``?"""
        try:
            doc = self.get(f"/apis/{group}/{version}")
        except KubeError as err:
            if err.status in (404, 503):
                return False
            raise
        return any(r.get("name") == plural for r in (doc or {}).get("resources", []))

    def call_count(self) -> int:
        with self._lock:
            return sum(self.calls.values())


def _kind_of(path: str) -> str:
    """``/apis/g/v/namespaces/ns/plural/name/status`` -> ``plural/status`` (for call counts)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return "/".join(parts) or "/"
    return "/".join([rest[0], *rest[2:3]])
