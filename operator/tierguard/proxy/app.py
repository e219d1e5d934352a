"""HTTP handlers of the cascade proxy.

Per chat request: validate it (:mod:`.requests`), pick a revision (sticky per conversation),
run the escalation loop (:mod:`.escalation`) with the delivery the request asked for
(:mod:`.delivery`: JSON or a stream), then hand the decision to the recorder's observers
(:mod:`.recorder`, :mod:`.observers`: metrics, drift, decision log, shadow scoring).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..policy import ProxyConfig
from ..review.outcome_events import Decided
from ..review.plugin import ReviewPlugin
from .auth import authorized, load_client_keys
from .conversations import ConversationAffinity, conversation_key
from .decision_log import DecisionLog
from .delivery import Delivery, JsonDelivery, StreamDelivery, error_response
from .drift_monitor import DriftMonitor, DriftSettings
from .escalation import escalate
from .ids import IdSigner, InvalidId, SeenIds, load_key
from .metrics import ProxyMetrics
from .observers import AffinityObserver, DecisionLogObserver, DriftObserver, MetricsObserver, ShadowObserver
from .outcome import Outcome
from .recorder import Decision, Recorder
from .requests import BadRequest, parse_feedback, read_chat_request, read_json
from .review_observer import ReviewObserver
from .runtime import Runtime
from .shadow import ShadowScorer

log = logging.getLogger("tierguard.proxy")


class ProxyApp:
    def __init__(
        self,
        config: ProxyConfig,
        signer: IdSigner,
        decision_log: DecisionLog,
        decision_log_fixed: bool = False,
    ) -> None:
        self.metrics = ProxyMetrics(config.policy)
        self.signer = signer
        self.decision_log_fixed = decision_log_fixed  # set on the command line: reloads keep it
        self.shadow = ShadowScorer(self.metrics, decision_log)
        self.drift = DriftMonitor(self.metrics.confidence_psi, DriftSettings.from_env())
        self.log_observer = DecisionLogObserver(decision_log)
        self.affinity = ConversationAffinity(config.settings, self._affinity_size)
        self.recorder = Recorder(
            [
                MetricsObserver(self.metrics),
                DriftObserver(self.drift),
                self.log_observer,
                ShadowObserver(self.shadow),
                AffinityObserver(self.affinity),
            ]
        )
        self.review = ReviewPlugin(
            self.metrics.registry,
            lambda: self.metrics.policy,
            self._verify_id,
            lambda e: self.decision_log.write(e),
        )
        self.recorder.add(ReviewObserver(self.review))
        self.shadow.on_result = self.review.observe_comparisons
        self.feedback_seen = SeenIds()
        self.session: aiohttp.ClientSession | None = None
        self._initial = config
        self.runtime: Runtime | None = None
        self.config_error: str | None = None  # the last rejected reload, until a good one applies
        # set on SIGTERM with a drain period: not ready, and every response closes its connection
        self.draining = False
        self.client_keys: tuple[bytes, ...] | None = None
        self.app = web.Application(
            client_max_size=config.settings.max_body_bytes, middlewares=[self._authenticate]
        )
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/feedback", self.feedback)
        self.app.router.add_post("/v1/outcomes", self.review.outcomes.handle)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_endpoint)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)
        self.app.on_response_prepare.append(self._close_when_draining)

    def _affinity_size(self, size: int) -> None:
        self.metrics.affinity_conversations.labels(self.metrics.policy).set(size)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        keys = self.client_keys
        if (
            keys is not None
            and request.path.startswith("/v1/")
            and not authorized(request.headers.get("Authorization"), keys)
        ):
            self.metrics.bad_requests.labels(self.metrics.policy, "unauthorized").inc()
            return error_response(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                etype="invalid_request_error",
                code="invalid_api_key",
            )
        response: web.StreamResponse = await handler(request)
        return response

    @property
    def decision_log(self) -> DecisionLog:
        return self.log_observer.log

    # --- lifecycle -----------------------------------------------------------------------------

    async def _startup(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        self.apply(self._initial)
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.decision_log.flush()

    async def _cleanup(self, _app: web.Application) -> None:
        self._flusher.cancel()
        await self.shadow.close()
        await asyncio.to_thread(self.review.close)
        if self.session is not None:
            await self.session.close()
        self.decision_log.close()

    def apply(self, config: ProxyConfig) -> Runtime:
        """Swap in a new configuration atomically (requests in flight keep the old one).

        Settings follow too: a new feedback key signs from now on while ids signed with the
        previous key still verify; a new decision-log target is opened (unless the command line
        fixed it). ``maxBodyBytes`` alone needs a restart: reported, not silently ignored.
        Raises ValueError (nothing changed) when a new key or tier API key cannot be read.
        """
        assert self.session is not None
        old = self.runtime.config.settings if self.runtime is not None else None
        new = config.settings
        signer = self.signer
        novelty = self.review.load_novelty(new.review)  # before anything changes: may raise
        if old is not None and (new.feedback_key != old.feedback_key or new.feedback_key is not None):
            key, source = load_key(new.feedback_key)  # a configured source is read again: it may rotate
            if key != self.signer.key:
                signer = IdSigner(key, previous_key=self.signer.key)
                log.info(
                    "feedback key rotated (now from %s); ids signed with the previous key still verify",
                    source,
                )
        client_keys = load_client_keys(new.client_keys)
        rt = Runtime(config, self.session, previous=self.runtime)
        if old is not None and new.decision_log != old.decision_log and not self.decision_log_fixed:
            previous_log = self.decision_log
            self.log_observer.log = self.shadow.decision_log = DecisionLog(
                None if new.decision_log == "off" else new.decision_log
            )
            previous_log.close()
        if old is not None and new.max_body_bytes != old.max_body_bytes:
            log.warning("settings.maxBodyBytes changed: takes effect at the next restart")
            self.metrics.reloads.labels(config.policy, "restart_required").inc()
        self.signer = signer
        self.affinity.configure(config.settings)
        self.client_keys = client_keys
        self.runtime = rt
        self.review.apply(new, novelty)
        self.drift.retain(r.name for r in rt.revisions())
        self.metrics.policy = config.policy
        self.metrics.set_config(
            rt.config_hash, rt.stable.name, rt.canary.name if rt.canary else None, rt.weight
        )
        return rt

    def _verify_id(self, response_id: object) -> Decided:
        """A response id this policy's proxies signed (for outcome events; the signer changes on a
        key rotation, so it is looked up per call). Raises InvalidId, an IdRejected."""
        return self.signer.verify(response_id)

    # --- simple endpoints ----------------------------------------------------------------------

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _close_when_draining(self, _req: web.Request, resp: web.StreamResponse) -> None:
        """While draining, answer with ``Connection: close``: a keep-alive client (whose
        connection the Service's NAT keeps on this pod) reconnects, to a replica that stays."""
        if self.draining:
            resp.force_close()  # the server closes the connection after this response
            resp.headers["Connection"] = "close"  # and says so (the hook runs after aiohttp's headers)

    async def readyz(self, _req: web.Request) -> web.Response:
        rt = self.runtime
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        if rt is None:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response(
            {
                "status": "ready",
                "config_hash": rt.config_hash,
                "policy": rt.config.policy,
                "stable": rt.stable.name,
                "canary": rt.canary.name if rt.canary else None,
                "canary_weight": rt.weight,
                # why the file on disk is not what is served (None once a good file is applied)
                "config_error": self.config_error,
            }
        )

    async def models(self, _req: web.Request) -> web.Response:
        rt = self.runtime
        assert rt is not None
        return web.json_response(
            {"object": "list", "data": [{"id": rt.config.policy, "object": "model", "owned_by": "tierguard"}]}
        )

    async def metrics_endpoint(self, _req: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def _bad(self, err: BadRequest) -> web.Response:
        self.metrics.bad_requests.labels(self.metrics.policy, err.reason).inc()
        status = 413 if err.reason == "too_large" else 400
        return error_response(status, str(err), etype="invalid_request_error", param=err.param, code=err.code)

    async def feedback(self, request: web.Request) -> web.Response:
        policy = self.metrics.policy
        try:
            response_id, rating = parse_feedback(await read_json(request))
        except BadRequest as err:
            return self._bad(err)
        try:
            decision = self.signer.verify(response_id)
        except InvalidId as err:
            self.metrics.feedback_rejected.labels(policy, err.reason).inc()
            return error_response(
                400,
                f"unknown response id ({err.reason})",
                etype="invalid_request_error",
                param="id",
                code=err.reason,
            )
        if not self.feedback_seen.add(response_id):
            self.metrics.feedback_rejected.labels(policy, "duplicate").inc()
            return error_response(
                409,
                "feedback for this response was already recorded",
                etype="invalid_request_error",
                param="id",
                code="duplicate",
            )
        self.metrics.feedback.labels(policy, decision.revision, decision.tier, rating).inc()
        self.decision_log.write(
            {
                "event": "feedback",
                "ts": time.time(),
                "id": response_id,
                "policy": policy,
                "revision": decision.revision,
                "tier": decision.tier,
                "confidence_bucket": decision.bucket,
                "rating": rating,
            }
        )
        return web.json_response(
            {"status": "recorded", "revision": decision.revision, "tier": decision.tier, "rating": rating}
        )

    # --- the cascade ---------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        gauge = self.metrics.in_flight
        gauge.inc()
        start = time.perf_counter()
        try:
            try:
                body = await read_chat_request(request)
            except BadRequest as err:
                return self._bad(err)
            rt = self.runtime
            assert rt is not None
            sticky = request.headers.get("x-tierguard-session") or body.get("user")
            rev = rt.pick(sticky)
            conversation = conversation_key(request.headers, body)
            outcome = Outcome(
                rev, start=self.affinity.start_tier(rev, conversation), conversation=conversation
            )
            delivery: Delivery = (
                StreamDelivery(request, body, outcome, self.signer)
                if body.get("stream")
                else JsonDelivery(body, outcome, self.signer)
            )
            try:
                return await escalate(outcome, body, delivery)
            except ConnectionResetError:
                # The client left while its answer was being written (aiohttp's
                # ClientConnectionResetError): nobody to answer; the upstream stream is closed.
                log.debug("client went away before its answer was written")
                return web.Response(status=499)
            finally:
                latency = time.perf_counter() - start
                self.recorder.record(Decision.of(self.metrics.policy, rt, body, outcome, latency))
        finally:
            gauge.dec()
