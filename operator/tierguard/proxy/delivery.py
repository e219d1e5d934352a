"""How an answer reaches the client: one JSON body, or a server-sent event stream.

The escalation loop (:mod:`tierguard.proxy.escalation`) is the same for both; it asks a
:class:`Delivery` to make each tier call (:meth:`Delivery.call`) and to hand the accepted answer
over (:meth:`Delivery.send`).

- :class:`JsonDelivery`: each tier answers in one piece; the accepted body goes out with the
  signed response id and the ``x-tierguard-*`` headers.
- :class:`StreamDelivery`: a cheaper tier's stream is buffered until its confidence is known (and
  cut as soon as acceptance became impossible: early abort); the last tier's stream passes
  through as it arrives, so its first byte reaches the client without waiting for its last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ..cascade import Reason
from ..confidence import confidence_bucket
from ..toolcalls import StreamedToolCalls, ToolCall, message_tool_calls
from .ids import IdSigner
from .outcome import Outcome
from .upstream import StreamState, TierClient, TierFailure, message_text

# Given the log-probabilities seen so far of a streaming answer: True to stop it (early abort).
GiveUp = Callable[[Sequence[float]], bool]
# Given the tool calls streamed so far: why to stop the stream now (a reason and a problem), or None.
StopOnCalls = Callable[[StreamedToolCalls], tuple[Reason, str | None] | None]


@dataclass(frozen=True, slots=True)
class Stops:
    """When to cut a cheaper tier's stream (the last tier's is never cut)."""

    give_up: GiveUp | None = None
    on_calls: StopOnCalls | None = None


NEVER = Stops()


@dataclass
class Reply:
    """What one tier call returned."""

    text: str
    logprobs: list[float]
    tokens_in: int
    tokens_out: int
    latency_s: float
    body: dict[str, Any] | None = None  # a whole completion (not streamed)
    chunks: list[bytes] = field(default_factory=list)  # streamed chunks not yet sent to the client
    aborted: bool = False  # the stream was cut: acceptance had become impossible
    broken: TierFailure | None = None  # failed after the answer began to reach the client
    tool_calls: list[ToolCall] = field(default_factory=list)  # the answer's function calls
    stopped: tuple[Reason, str | None] | None = None  # cut at a tool call: (reason, problem)

    @property
    def has_answer(self) -> bool:
        return self.body is not None or bool(self.text) or bool(self.logprobs) or bool(self.tool_calls)


class Delivery(Protocol):
    response: web.StreamResponse | None  # set once the answer began to reach the client

    async def call(self, client: TierClient, *, last: bool, logprobs: bool, stops: Stops) -> Reply:
        """Call one tier; raise :class:`TierFailure` when nothing reached the client."""
        ...

    async def send(self, reply: Reply) -> web.StreamResponse:
        """Hand the accepted ``reply`` to the client (or finish handing it, when it passed through)."""
        ...


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


def failure_response(err: TierFailure, outcome: Outcome) -> web.Response:
    """The OpenAI-style error for a request no tier could answer."""
    etype = {"timeout": "timeout_error", "http_429": "rate_limit_error"}.get(err.kind, "upstream_error")
    if err.kind in ("http_4xx", "client_error"):
        etype = "invalid_request_error"
    headers = {
        "x-tierguard-revision": outcome.revision.name,
        "x-tierguard-tiers-tried": ",".join(a.tier for a in outcome.attempts),
    }
    if err.retry_after is not None:  # the last tier's own advice to a rate-limited client
        headers["Retry-After"] = err.retry_after
    return error_response(err.status, str(err), etype=etype, code=err.kind, headers=headers)


def issue_id(outcome: Outcome, signer: IdSigner) -> str:
    """Sign the response id (revision, answering tier, confidence bucket) and keep it in ``outcome``."""
    tier = outcome.answered_tier
    assert tier is not None
    conf = outcome.confidence
    outcome.response_id = signer.issue(
        outcome.revision.name, tier, -1 if conf is None else confidence_bucket(conf)
    )
    return outcome.response_id


def answer_headers(outcome: Outcome) -> dict[str, str]:
    tier = outcome.answered_tier
    assert tier is not None
    conf = outcome.confidence
    return {
        "x-tierguard-tier": tier,
        "x-tierguard-revision": outcome.revision.name,
        "x-tierguard-confidence": "none" if conf is None else f"{conf:.4f}",
        "x-tierguard-tiers-tried": ",".join(a.tier for a in outcome.attempts),
    }


class JsonDelivery:
    def __init__(self, body: dict[str, Any], outcome: Outcome, signer: IdSigner) -> None:
        self.body = body
        self.outcome = outcome
        self.signer = signer
        self.response: web.StreamResponse | None = None

    async def call(self, client: TierClient, *, last: bool, logprobs: bool, stops: Stops) -> Reply:
        comp = await client.complete(self.body, logprobs=logprobs)
        calls = message_tool_calls(comp.body["choices"][0].get("message"))
        return Reply(
            message_text(comp.body),
            comp.logprobs,
            comp.tokens_in,
            comp.tokens_out,
            comp.latency_s,
            comp.body,
            tool_calls=calls,
        )

    async def send(self, reply: Reply) -> web.StreamResponse:
        body = reply.body
        assert body is not None
        body["id"] = issue_id(self.outcome, self.signer)
        if not self.body.get("logprobs"):
            for choice in body.get("choices") or []:
                if isinstance(choice, dict):
                    choice.pop("logprobs", None)
        self.response = web.Response(
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=answer_headers(self.outcome),
        )
        return self.response


class StreamDelivery:
    def __init__(
        self, request: web.Request, body: dict[str, Any], outcome: Outcome, signer: IdSigner
    ) -> None:
        self.request = request
        self.body = body
        self.outcome = outcome
        self.signer = signer
        self.response: web.StreamResponse | None = None

    async def call(self, client: TierClient, *, last: bool, logprobs: bool, stops: Stops) -> Reply:
        """Buffer a cheaper tier's stream (cut when ``stops.give_up`` says so, or ``stops.on_calls``
        once the streamed tool calls decide it); pass the last tier's through.

        A failure once the client has had a first chunk ends the stream with an error event and
        comes back as ``Reply.broken``: the status line is gone, it cannot become an error status.
        """
        state = StreamState()
        t0 = time.perf_counter()
        aborted = False
        stopped: tuple[Reason, str | None] | None = None
        gen = client.stream(self.body, state, logprobs=logprobs)
        try:
            async for _event in gen:
                if last:
                    await self._forward(state.chunks[-1])
                elif stops.give_up is not None and state.logprobs and stops.give_up(state.logprobs):
                    aborted = True
                    break
                elif stops.on_calls is not None and state.tool_calls:
                    stopped = stops.on_calls(state.tool_calls)
                    if stopped is not None:
                        break
        except TierFailure as err:
            err.latency_s = time.perf_counter() - t0
            if self.response is None:
                raise
            event = {"error": {"message": str(err), "type": "upstream_error", "code": err.kind}}
            await self.response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await self.response.write_eof()
            return Reply("", [], 0, 0, err.latency_s, broken=err)
        finally:
            await gen.aclose()
        return Reply(
            "".join(state.text),
            state.logprobs,
            *state.usage,
            time.perf_counter() - t0,
            chunks=[] if last else state.chunks,
            aborted=aborted,
            tool_calls=state.tool_calls.calls(),
            stopped=stopped,
        )

    async def send(self, reply: Reply) -> web.StreamResponse:
        resp = self.response
        if resp is None:
            resp = await self._start()
            for payload in reply.chunks:
                out = self._rewrite(payload)
                if out is not None:
                    await resp.write(out)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _forward(self, payload: bytes) -> None:
        resp = self.response or await self._start()
        out = self._rewrite(payload)
        if out is not None:
            await resp.write(out)

    async def _start(self) -> web.StreamResponse:
        issue_id(self.outcome, self.signer)
        headers = answer_headers(self.outcome)
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        resp = self.response = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(self.request)
        return resp

    def _rewrite(self, payload: bytes) -> bytes | None:
        """The upstream chunk as the client sees it: our id; usage and logprobs only if asked for."""
        chunk = json.loads(payload)
        chunk["id"] = self.outcome.response_id
        request = self.body
        if chunk.get("usage") is not None and not (request.get("stream_options") or {}).get("include_usage"):
            if not chunk.get("choices"):
                return None
            chunk.pop("usage", None)
        if not request.get("logprobs"):
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict):
                    choice.pop("logprobs", None)
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
