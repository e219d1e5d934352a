"""HTTP handlers of the cascade proxy.

Per request: pick a revision (sticky per conversation), call tier 0, judge its calibrated
confidence with :func:`tierguard.cascade.judge`, escalate until a tier is accepted (the last tier
always answers), then record metrics and one decision-log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..cascade import Judgement, acceptance_impossible, judge, raw_confidence
from ..confidence import confidence_bucket
from ..policy import ProxyConfig, Tier
from .decision_log import DecisionLog
from .drift_monitor import DriftMonitor, DriftSettings
from .ids import IdSigner, InvalidId, SeenIds, load_key
from .metrics import ProxyMetrics
from .runtime import RevisionRuntime, Runtime
from .shadow import ShadowScorer, message_text
from .upstream import Completion, StreamState, TierClient, TierFailure

log = logging.getLogger("tierguard.proxy")

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason


def error_response(
    status: int,
    message: str,
    *,
    etype: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def validate_request(body: Any) -> dict[str, Any]:
    """Check the parts of a chat-completions request the cascade relies on."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] must be an object with a valid 'role'", f"messages[{i}]")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content must be a string or an array", f"messages[{i}].content")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise BadRequest(f"'{key}' must be a positive integer", key)
    n = body.get("n")
    if n not in (None, 1):
        raise BadRequest("a cascade answers with one choice: 'n' must be 1", "n")
    if "user" in body and not isinstance(body["user"], str):
        raise BadRequest("'user' must be a string", "user")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    if "logprobs" in body and not isinstance(body["logprobs"], bool | None):
        raise BadRequest("'logprobs' must be a boolean", "logprobs")
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise BadRequest("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    for key in ("temperature", "top_p"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise BadRequest(f"'{key}' must be a number", key)
    return body


@dataclass
class Attempt:
    tier: str
    judgement: Judgement | None = None
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    streamed_tokens: int | None = None

    def used(self, tier: Tier, tokens_in: int, tokens_out: int, latency_s: float) -> None:
        """Record what the call took and cost."""
        self.latency_s = latency_s
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.cost_usd = tier.cost_usd(tokens_in, tokens_out)

    def failed(self, err: TierFailure) -> None:
        self.error = str(err)
        self.error_kind = err.kind

    def as_log(self) -> dict[str, Any]:
        j = self.judgement
        out: dict[str, Any] = {
            "tier": self.tier,
            "reason": j.reason if j else None,
            "confidence": _round(j.confidence) if j else None,
            "raw_confidence": _round(j.raw_confidence) if j else None,
            "latency_ms": round(self.latency_s * 1000, 2),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
        }
        if self.error:
            out["error"] = self.error
        if self.streamed_tokens is not None:
            out["tokens_seen_before_abort"] = self.streamed_tokens
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


@dataclass
class Outcome:
    revision: RevisionRuntime
    attempts: list[Attempt] = field(default_factory=list)
    answered: int | None = None  # index of the answering tier, None on failure
    failure: TierFailure | None = None
    response_id: str = ""

    @property
    def confidence(self) -> float | None:
        if self.answered is None or not self.attempts or self.attempts[-1].judgement is None:
            return None
        return self.attempts[-1].judgement.confidence


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
        self.decision_log = decision_log
        self.decision_log_fixed = decision_log_fixed  # set on the command line: reloads keep it
        self.shadow = ShadowScorer(self.metrics, decision_log)
        self.drift = DriftMonitor(self.metrics.confidence_psi, DriftSettings.from_env())
        self.feedback_seen = SeenIds()
        self.session: aiohttp.ClientSession | None = None
        self._initial = config
        self.runtime: Runtime | None = None
        # set on SIGTERM with a drain period: not ready, and every response closes its connection
        self.draining = False
        self.app = web.Application(client_max_size=config.settings.max_body_bytes)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/feedback", self.feedback)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_endpoint)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)
        self.app.on_response_prepare.append(self._close_when_draining)

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
        if old is not None and new.feedback_key != old.feedback_key:
            key, source = load_key(new.feedback_key)
            signer = IdSigner(key, previous_key=self.signer.key)
            log.info(
                "feedback key rotated (now from %s); ids signed with the previous key still verify", source
            )
        rt = Runtime(config, self.session, previous=self.runtime)
        if old is not None and new.decision_log != old.decision_log and not self.decision_log_fixed:
            previous_log = self.decision_log
            self.decision_log = self.shadow.decision_log = DecisionLog(
                None if new.decision_log == "off" else new.decision_log
            )
            previous_log.close()
        if old is not None and new.max_body_bytes != old.max_body_bytes:
            log.warning("settings.maxBodyBytes changed: takes effect at the next restart")
            self.metrics.reloads.labels(config.policy, "restart_required").inc()
        self.signer = signer
        self.runtime = rt
        self.drift.retain(r.name for r in rt.revisions())
        self.metrics.policy = config.policy
        self.metrics.set_config(
            rt.config_hash, rt.stable.name, rt.canary.name if rt.canary else None, rt.weight
        )
        return rt

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

    async def _json_body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest("request body too large", reason="too_large") from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON", reason="bad_json") from None

    def _bad(self, err: BadRequest) -> web.Response:
        self.metrics.bad_requests.labels(self.metrics.policy, err.reason).inc()
        status = 413 if err.reason == "too_large" else 400
        return error_response(status, str(err), etype="invalid_request_error", param=err.param)

    async def feedback(self, request: web.Request) -> web.Response:
        policy = self.metrics.policy
        try:
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            rating = body.get("rating")
            if rating not in ("up", "down"):
                raise BadRequest("'rating' must be 'up' or 'down'", "rating")
        except BadRequest as err:
            return self._bad(err)
        try:
            decision = self.signer.verify(body.get("id"))
        except InvalidId as err:
            self.metrics.feedback_rejected.labels(policy, err.reason).inc()
            return error_response(
                400,
                f"unknown response id ({err.reason})",
                etype="invalid_request_error",
                param="id",
                code=err.reason,
            )
        if not self.feedback_seen.add(body["id"]):
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
                "id": body["id"],
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
                body = validate_request(await self._json_body(request))
            except BadRequest as err:
                return self._bad(err)
            rt = self.runtime
            assert rt is not None
            sticky = request.headers.get("x-tierguard-session") or body.get("user")
            rev = rt.pick(sticky)
            outcome = Outcome(rev)
            try:
                if body.get("stream"):
                    return await self._stream(request, body, rt, outcome)
                return await self._complete(body, rt, outcome)
            finally:
                self._record(rt, outcome, time.perf_counter() - start, body)
        finally:
            gauge.dec()

    def _tiers_to_try(self, rev: RevisionRuntime) -> range:
        n = len(rev.clients)
        return range(n - 1, n) if rev.capable_only else range(n)

    @staticmethod
    async def _self_eval(client: TierClient, body: dict[str, Any], answer: str, prompt: str) -> float | None:
        """Ask the tier whether its own answer is correct; confidence = P("Y")."""
        question = {"role": "user", "content": prompt}
        verify = {
            "messages": [*body["messages"], {"role": "assistant", "content": answer}, question],
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": 5,
            "temperature": 0,
        }
        comp = await client.complete(verify, logprobs=True)
        return p_yes(comp.body)

    async def _judge(
        self,
        rev: RevisionRuntime,
        i: int,
        client: TierClient,
        body: dict[str, Any],
        comp: Completion | None,
        text: str,
        logprobs: list[float],
        attempt: Attempt,
    ) -> Judgement:
        spec = rev.revision.cascade
        last = i == len(rev.clients) - 1
        raw: float | None = None
        if comp is not None or text or logprobs:
            if spec.confidence.method == "logprob":
                raw = raw_confidence(spec, logprobs) if logprobs else None
            elif not last:
                try:
                    raw = await self._self_eval(client, body, text, spec.confidence.self_eval_prompt)
                except TierFailure as err:
                    attempt.failed(err)
                    attempt.error = f"self_eval: {err}"
                    return judge(spec, i, None, error=True)
        j = judge(spec, i, raw)
        return last_tier_answer(rev, j) if rev.capable_only else j

    async def _complete(self, body: dict[str, Any], rt: Runtime, outcome: Outcome) -> web.Response:
        rev = outcome.revision
        spec = rev.revision.cascade
        want_logprobs = spec.confidence.method == "logprob"
        for i in self._tiers_to_try(rev):
            client = rev.clients[i]
            attempt = Attempt(client.tier.name)
            outcome.attempts.append(attempt)
            try:
                comp: Completion | None = await client.complete(
                    body, logprobs=want_logprobs or bool(body.get("logprobs"))
                )
            except TierFailure as err:
                comp = None
                attempt.failed(err)
                attempt.judgement = judge(spec, i, None, error=True)
                if i == len(rev.clients) - 1 or err.kind == "client_error":
                    outcome.failure = err
                    return self._failure_response(err, outcome)
                continue
            assert comp is not None
            attempt.used(client.tier, comp.tokens_in, comp.tokens_out, comp.latency_s)
            text = message_text(comp.body)
            attempt.judgement = await self._judge(rev, i, client, body, comp, text, comp.logprobs, attempt)
            if attempt.judgement.accepted:
                outcome.answered = i
                response = self._answer(body, comp.body, outcome)
                self._maybe_shadow(rt, outcome, body, text)
                return response
        raise AssertionError("the last tier always answers")  # pragma: no cover

    def _maybe_shadow(self, rt: Runtime, outcome: Outcome, body: dict[str, Any], answer: str) -> None:
        assert outcome.answered is not None
        settings = rt.config.settings
        self.shadow.maybe_sample(
            outcome.revision,
            outcome.answered,
            settings.shadow_rate,
            settings.shadow_max_in_flight,
            body,
            answer,
            outcome.response_id,
        )

    def _issue_id(self, outcome: Outcome) -> str:
        assert outcome.answered is not None
        tier = outcome.revision.clients[outcome.answered].tier.name
        conf = outcome.confidence
        outcome.response_id = self.signer.issue(
            outcome.revision.name, tier, -1 if conf is None else confidence_bucket(conf)
        )
        return outcome.response_id

    def _headers(self, outcome: Outcome) -> dict[str, str]:
        assert outcome.answered is not None
        conf = outcome.confidence
        return {
            "x-tierguard-tier": outcome.revision.clients[outcome.answered].tier.name,
            "x-tierguard-revision": outcome.revision.name,
            "x-tierguard-confidence": "none" if conf is None else f"{conf:.4f}",
            "x-tierguard-tiers-tried": ",".join(a.tier for a in outcome.attempts),
        }

    def _answer(self, request_body: dict[str, Any], body: dict[str, Any], outcome: Outcome) -> web.Response:
        body["id"] = self._issue_id(outcome)
        if not request_body.get("logprobs"):
            for choice in body.get("choices") or []:
                if isinstance(choice, dict):
                    choice.pop("logprobs", None)
        return web.Response(
            body=json.dumps(body).encode(), content_type="application/json", headers=self._headers(outcome)
        )

    def _failure_response(self, err: TierFailure, outcome: Outcome) -> web.Response:
        etype = {"timeout": "timeout_error", "http_429": "rate_limit_error"}.get(err.kind, "upstream_error")
        if err.kind in ("http_4xx", "client_error"):
            etype = "invalid_request_error"
        headers = {
            "x-tierguard-revision": outcome.revision.name,
            "x-tierguard-tiers-tried": ",".join(a.tier for a in outcome.attempts),
        }
        return error_response(err.status, str(err), etype=etype, code=err.kind, headers=headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], rt: Runtime, outcome: Outcome
    ) -> web.StreamResponse:
        rev = outcome.revision
        spec = rev.revision.cascade
        want_logprobs = spec.confidence.method == "logprob" or bool(body.get("logprobs"))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        n = len(rev.clients)
        for i in self._tiers_to_try(rev):
            client = rev.clients[i]
            attempt = Attempt(client.tier.name)
            outcome.attempts.append(attempt)
            state = StreamState()
            t0 = time.perf_counter()
            if i < n - 1:
                # A cheap tier's answer is buffered until its confidence is known.
                aborted = False
                try:
                    gen = client.stream(body, state, logprobs=want_logprobs)
                    try:
                        async for _event in gen:
                            if state.logprobs and acceptance_impossible(spec, i, state.logprobs, max_tokens):
                                aborted = True
                                break
                    finally:
                        await gen.aclose()
                except TierFailure as err:
                    attempt.failed(err)
                    attempt.latency_s = time.perf_counter() - t0
                    attempt.judgement = judge(spec, i, None, error=True)
                    if err.kind == "client_error":
                        outcome.failure = err
                        return self._failure_response(err, outcome)
                    continue
                attempt.used(client.tier, *state.usage, time.perf_counter() - t0)
                if aborted:
                    attempt.streamed_tokens = len(state.logprobs)
                    raw = raw_confidence(spec, state.logprobs)
                    j = judge(spec, i, raw)
                    attempt.judgement = Judgement(i, False, "early_abort", j.raw_confidence, j.confidence)
                    continue
                attempt.judgement = await self._judge(
                    rev, i, client, body, None, "".join(state.text), state.logprobs, attempt
                )
                if not attempt.judgement.accepted:
                    continue
                outcome.answered = i
                resp = await self._start_stream(request, outcome)
                for payload in state.chunks:
                    out = self._rewrite_chunk(payload, outcome.response_id, body)
                    if out is not None:
                        await resp.write(out)
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                self._maybe_shadow(rt, outcome, body, "".join(state.text))
                return resp
            # The last tier streams through as it arrives.
            resp_started: web.StreamResponse | None = None
            try:
                async for event in client.stream(body, state, logprobs=want_logprobs):
                    if resp_started is None:
                        outcome.answered = i
                        attempt.judgement = last_tier_answer(rev, judge(spec, i, None))
                        resp_started = await self._start_stream(request, outcome)
                    out = self._rewrite_chunk(state.chunks[-1], outcome.response_id, body)
                    del event
                    if out is not None:
                        await resp_started.write(out)
            except TierFailure as err:
                attempt.failed(err)
                attempt.latency_s = time.perf_counter() - t0
                if resp_started is None:
                    outcome.answered = None
                    attempt.judgement = judge(spec, i, None, error=True)
                    outcome.failure = err
                    return self._failure_response(err, outcome)
                outcome.failure = err
                err_event = {"error": {"message": str(err), "type": "upstream_error", "code": err.kind}}
                await resp_started.write(b"data: " + json.dumps(err_event).encode() + b"\n\n")
                await resp_started.write_eof()
                return resp_started
            attempt.used(client.tier, *state.usage, time.perf_counter() - t0)
            if state.logprobs and spec.confidence.method == "logprob":
                attempt.judgement = last_tier_answer(
                    rev, judge(spec, i, raw_confidence(spec, state.logprobs))
                )
            if resp_started is None:  # an empty stream: still a valid (empty) answer
                outcome.answered = i
                attempt.judgement = attempt.judgement or last_tier_answer(rev, judge(spec, i, None))
                resp_started = await self._start_stream(request, outcome)
            await resp_started.write(b"data: [DONE]\n\n")
            await resp_started.write_eof()
            return resp_started
        raise AssertionError("the last tier always answers")  # pragma: no cover

    async def _start_stream(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        self._issue_id(outcome)
        headers = self._headers(outcome)
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        return resp

    @staticmethod
    def _rewrite_chunk(payload: bytes, response_id: str, request_body: dict[str, Any]) -> bytes | None:
        chunk = json.loads(payload)
        chunk["id"] = response_id
        if chunk.get("usage") is not None and not (request_body.get("stream_options") or {}).get(
            "include_usage"
        ):
            if not chunk.get("choices"):
                return None
            chunk.pop("usage", None)
        if not request_body.get("logprobs"):
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict):
                    choice.pop("logprobs", None)
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    # --- recording -----------------------------------------------------------------------------

    def _record(self, rt: Runtime, outcome: Outcome, latency_s: float, body: dict[str, Any]) -> None:
        m = self.metrics
        policy = m.policy
        rev = outcome.revision.name
        total_cost = 0.0
        tokens_in_first = 0
        for k, a in enumerate(outcome.attempts):
            j = a.judgement
            if a.error_kind == "client_error":
                result = "client_error"  # the request's fault: not a tier error
            elif a.error is not None and (j is None or not j.accepted or outcome.failure is not None):
                result = "error"
            elif j is not None and j.accepted:
                result = "accepted"
            else:
                result = "escalated"
            m.tier_requests.labels(policy, rev, a.tier, result).inc()
            if j is not None and not j.accepted and result != "client_error":
                m.escalations.labels(policy, rev, a.tier, j.reason).inc()
            if j is not None and j.confidence is not None:
                m.confidence.labels(policy, rev, a.tier).observe(j.confidence)
                self.drift.observe(policy, outcome.revision.revision, j.tier, j.confidence)
            if a.latency_s:
                m.tier_latency.labels(policy, rev, a.tier).observe(a.latency_s)
            if a.tokens_in:
                m.tokens.labels(policy, rev, a.tier, "in").inc(a.tokens_in)
            if a.tokens_out:
                m.tokens.labels(policy, rev, a.tier, "out").inc(a.tokens_out)
            if a.cost_usd:
                m.cost.labels(policy, rev, a.tier).inc(a.cost_usd)
            total_cost += a.cost_usd
            if k == 0:
                tokens_in_first = a.tokens_in
        answered_tier = (
            outcome.revision.clients[outcome.answered].tier.name if outcome.answered is not None else "none"
        )
        if outcome.failure is not None and outcome.failure.kind == "client_error":
            status = "client_error"
        elif outcome.failure is not None or outcome.answered is None:
            status = "error"
        else:
            status = "ok"
        if outcome.attempts:
            m.requests.labels(policy, rev, answered_tier, status).inc()
            m.request_latency.labels(policy, rev).observe(latency_s)
            capable = outcome.revision.clients[-1].tier
            last_out = outcome.attempts[-1].tokens_out
            m.counterfactual.labels(policy, rev).inc(capable.cost_usd(tokens_in_first, last_out))
        entry: dict[str, Any] = {
            "event": "request",
            "ts": time.time(),
            "id": outcome.response_id or None,
            "policy": policy,
            "revision": rev,
            "config_hash": rt.config_hash,
            "stream": bool(body.get("stream")),
            "answered_by": answered_tier,
            "reason": outcome.attempts[-1].judgement.reason
            if outcome.attempts and outcome.attempts[-1].judgement
            else None,
            "status": status,
            "latency_ms": round(latency_s * 1000, 2),
            "cost_usd": total_cost,
            "tiers": [a.as_log() for a in outcome.attempts],
        }
        if rt.config.settings.log_prompts:  # off unless explicitly enabled
            entry["messages"] = body.get("messages")
        self.decision_log.write(entry)


def last_tier_answer(rev: RevisionRuntime, j: Judgement) -> Judgement:
    """The last tier's judgement (always accepted), labelled ``capable_only`` on that revision."""
    return Judgement(
        j.tier, True, "capable_only" if rev.capable_only else "last_tier", j.raw_confidence, j.confidence
    )


def p_yes(body: dict[str, Any]) -> float | None:
    """P("Y") from a one-token verification reply's logprobs (None when it carries none)."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        return None
    candidates = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
    p_y = p_n = None
    for cand in candidates:
        token = str(cand.get("token", "")).strip().upper()
        lp = cand.get("logprob")
        if not isinstance(lp, int | float):
            continue
        if token in ("Y", "YES") and p_y is None:
            p_y = math.exp(lp)
        elif token in ("N", "NO") and p_n is None:
            p_n = math.exp(lp)
    if p_y is not None:
        return min(1.0, p_y)
    if p_n is not None:
        return max(0.0, 1.0 - p_n)
    return None
