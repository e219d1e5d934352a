"""A fault-injecting HTTP reverse proxy on loopback, in front of a real server.

Not a mock: every request it does not fault is forwarded to the real upstream (a kube-apiserver
over TLS, a Prometheus over HTTP) and the answer streamed back as it arrives, so watches keep
working. Faults are rules added while it runs::

    proxy = FaultProxy("https://127.0.0.1:6443", ca_file=cluster.pki.ca_crt).start()
    rule = proxy.add(Rule("PATCH", r"/configmaps/chat-proxy$", status=503, times=1))
    ...                                   # the next ConfigMap PATCH gets a 503, later ones pass
    assert rule.hits == 1

A rule matches a method (or ``*``), a regular expression searched in the path (without the
query) and optionally one searched in the request body; rules are tried in the order added, and
the first that takes a request faults it. ``skip`` matching requests pass first, then ``times`` of them (None: every one) get the
fault:

* ``delay`` seconds before the request is forwarded (a slow upstream);
* ``status``: answered by the proxy with that status and a Kubernetes-style ``Status`` body,
  never forwarded (the write did not happen: an unavailable API server);
* ``status`` with ``forward=True``: forwarded, the upstream's answer thrown away and replaced
  by the status (the write happened but its answer was lost);
* ``hang``: held without an answer until the rule is removed or the proxy stops.

The proxy speaks plain HTTP to its clients; :func:`kubeconfig_via` writes a kubeconfig that
reaches the API server through it with the same credentials.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tierguard.localenv.ports import free_port

_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip


@dataclass
class Rule:
    method: str
    path: str  # a regular expression, searched in the request path
    body: str | None = None  # a regular expression the request body must contain
    delay: float = 0.0
    status: int | None = None
    forward: bool = False
    hang: bool = False
    skip: int = 0
    times: int | None = 1
    seen: int = 0  # matching requests so far
    hits: int = 0  # faults injected so far
    log: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, "METHOD path") per fault
    _released: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str, body: str) -> bool:
        return (
            self.method in ("*", method)
            and re.search(self.path, path) is not None
            and (self.body is None or re.search(self.body, body) is not None)
        )

    def take(self, method: str, path: str) -> bool:
        """Count a matching request; True when this one gets the fault."""
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        self.log.append((time.monotonic(), f"{method} {path}"))
        return True


class FaultProxy:
    def __init__(self, upstream: str, *, ca_file: str | Path | None = None, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.port = port or free_port()
        self.rules: list[Rule] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)
        rule._released.set()

    def clear(self) -> None:
        for rule in list(self.rules):
            self.remove(rule)

    def _fault_for(self, method: str, path: str, body: bytes) -> Rule | None:
        text = body.decode(errors="replace")
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path, text) and rule.take(method, path):
                    return rule
        return None

    # --- server ---------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the fault proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._error}")
        return self

    def stop(self) -> None:
        for rule in list(self.rules):
            rule._released.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # reported by start()
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ctx: ssl.SSLContext | bool = False
        if self.upstream.startswith("https"):
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        self._session = ClientSession(
            connector=TCPConnector(ssl=ctx, limit=0),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rule = self._fault_for(request.method, request.path, body)
        if rule is not None and rule.hang:
            await asyncio.to_thread(rule._released.wait)
            return _status(503, "the fault proxy released a held request")
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status is not None and not rule.forward:
            return _status(rule.status, "injected by the fault proxy")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.setdefault("Accept-Encoding", "identity")  # bodies pass through as they come
        url = self.upstream + request.path_qs
        async with self._session.request(request.method, url, headers=headers, data=body or None) as up:
            if rule is not None and rule.status is not None:  # forwarded, the answer is lost
                await up.read()
                return _status(rule.status, "injected by the fault proxy after forwarding")
            resp = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp


def _status(code: int, message: str) -> web.Response:
    reason = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}.get(code, "Unknown")
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


def kubeconfig_via(kubeconfig: Path, proxy: FaultProxy, out: Path) -> Path:
    """A copy of a (JSON) kubeconfig whose cluster is reached through ``proxy`` (plain HTTP)."""
    cfg: dict[str, Any] = json.loads(kubeconfig.read_text())
    for entry in cfg["clusters"]:
        entry["cluster"] = {"server": proxy.url}
    out.write_text(json.dumps(cfg, indent=2) + "\n")
    out.chmod(0o600)
    return out
