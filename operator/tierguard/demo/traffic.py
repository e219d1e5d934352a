"""The moving parts a cluster would provide around the operator, run as threads of the demo (and of
the end-to-end tests): a kubelet's ConfigMap-to-file sync for the proxies, a load generator, and a
recorder of a policy's status."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import yaml

from ..localenv.kube import KubeCluster

Prompt = tuple[str | None, str]  # (system prompt, user prompt)


class Endpoint(Protocol):
    host: str
    port: int


def get_or_none(cluster: KubeCluster, path: str) -> Any:
    status, body = cluster.request("GET", path, check=False)
    return body if status == 200 else None


def owned_config(cluster: KubeCluster, ns: str, policy: str) -> str | None:
    """The proxy config the operator rendered for ``policy``: the one data value of the ConfigMap
    the CascadePolicy owns (found by its owner reference, as a kubelet mounts it by name)."""
    body = get_or_none(cluster, f"/api/v1/namespaces/{ns}/configmaps")
    for cm in (body or {}).get("items", []):
        owners = cm["metadata"].get("ownerReferences") or []
        if any(o.get("kind") == "CascadePolicy" and o.get("name") == policy for o in owners):
            values = list((cm.get("data") or {}).values())
            return str(values[0]) if len(values) == 1 else None
    return None


class ConfigSync(threading.Thread):
    """What the kubelet does for a mounted ConfigMap: copy the policy's rendered proxy config into a
    file, atomically."""

    def __init__(self, cluster: KubeCluster, ns: str, policy: str, path: Any, poll: float = 0.2) -> None:
        super().__init__(daemon=True, name=f"sync-{policy}")
        self.cluster, self.ns, self.policy, self.path, self.poll = cluster, ns, policy, path, poll
        self.stop_event = threading.Event()
        self.writes: list[tuple[float, int]] = []  # (monotonic time, canary weight)

    def run(self) -> None:
        last = None
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                text = owned_config(self.cluster, self.ns, self.policy)
                if text and text != last:
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text(text)
                    tmp.replace(self.path)
                    last = text
                    self.writes.append((time.monotonic(), int(yaml.safe_load(text).get("canaryWeight", 0))))
            self.stop_event.wait(self.poll)


ResponseHook = Callable[[int, int, Mapping[str, str]], None]
"""Called with (prompt index, HTTP status, response headers) after every request."""
FeedbackHook = Callable[[int, Mapping[str, str]], str | None]
"""Called with (prompt index, response headers) after an answer: "up", "down" or None (no feedback)."""


class Load(threading.Thread):
    """Chat completions at about ``rps`` requests per second, spread over the proxies."""

    def __init__(
        self,
        proxies: Sequence[Endpoint],
        prompts: Sequence[Prompt],
        rps: float,
        *,
        on_response: ResponseHook | None = None,
        feedback: FeedbackHook | None = None,
        workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(daemon=True, name="load")
        self.proxies, self.prompts, self.rps = list(proxies), list(prompts), rps
        self.on_response = on_response
        self.feedback = feedback
        self.feedback_sent = 0
        self.stop_event = threading.Event()
        self.ok = self.failed = 0
        self.workers = workers
        self.seed = seed

    def _worker(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        conns: dict[int, http.client.HTTPConnection] = {}
        period = self.workers / self.rps
        nxt = time.monotonic()
        while not self.stop_event.is_set():
            proxy = self.proxies[rng.randrange(len(self.proxies))]
            index = rng.randrange(len(self.prompts))
            system, user = self.prompts[index]
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}
            ]
            body = json.dumps({"model": "auto", "messages": messages, "max_tokens": 64}).encode()
            try:
                conn = conns.get(proxy.port) or http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
                conns[proxy.port] = conn
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                if self.on_response is not None:
                    self.on_response(index, resp.status, headers)
                rating = self.feedback(index, headers) if self.feedback and resp.status == 200 else None
                if rating is not None:
                    # to the replica that answered: it verifies the response id it signed
                    answer_id = json.loads(data)["id"]
                    fb = json.dumps({"id": answer_id, "rating": rating}).encode()
                    conn.request("POST", "/v1/feedback", fb, {"Content-Type": "application/json"})
                    conn.getresponse().read()
                    self.feedback_sent += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conns.pop(proxy.port, None)
            nxt += period
            self.stop_event.wait(max(0.0, nxt - time.monotonic()))

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def policy_status(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    obj = get_or_none(cluster, f"/apis/tierguard.io/v1alpha1/namespaces/{ns}/cascadepolicies/{name}")
    return dict((obj or {}).get("status") or {})


class StatusLog(threading.Thread):
    """Records every change of (phase, canaryWeight) in a policy's status, with the time, and keeps
    the latest status."""

    def __init__(self, cluster: KubeCluster, ns: str, policy: str, poll: float = 0.1) -> None:
        super().__init__(daemon=True, name=f"status-{policy}")
        self.cluster, self.ns, self.policy, self.poll = cluster, ns, policy, poll
        self.stop_event = threading.Event()
        self.changes: list[tuple[float, str, int]] = []
        self.latest: dict[str, Any] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                st = policy_status(self.cluster, self.ns, self.policy)
                self.latest = st
                key = (st.get("phase", ""), int(st.get("canaryWeight", 0)))
                if st and (not self.changes or self.changes[-1][1:] != key):
                    self.changes.append((time.monotonic(), *key))
            self.stop_event.wait(self.poll)

    def weights(self, since: float = 0.0) -> list[int]:
        out: list[int] = []
        for t, phase, w in self.changes:
            if t >= since and phase in ("Progressing", "Paused") and (not out or out[-1] != w):
                out.append(w)
        return out
