"""The simulator's HTTP server: OpenAI chat completions answered from recorded outcomes.

Endpoints:

- ``POST /v1/chat/completions`` (also ``/chat/completions``): non-streaming, or SSE with
  ``stream: true`` in OpenAI's chunk format (``stream_options.include_usage`` honoured).
- ``GET /v1/models``, ``GET /v1/models/{model}``, ``GET /healthz``.
- ``GET``/``POST /admin/faults``: error rate and status, hang rate, latency scale, extra latency.
- ``GET /admin/stats`` (``POST /admin/stats/reset`` zeroes it): requests by kind, injected
  faults, and requests/streams the client abandoned.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from ..agent_requests import json_type_name as _type_name
from .data import Reply, SimData, estimate_tokens, unknown_reply

log = logging.getLogger("tierguard.sim")

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SYSTEM_ROLES = frozenset({"system", "developer"})
MAX_TOP_LOGPROBS = 20
FINGERPRINT = "fp_tierguard_sim"
_JSON_SEPARATORS = (",", ":")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=_JSON_SEPARATORS, ensure_ascii=False)


# --- faults and stats --------------------------------------------------------------------------


@dataclass
class Faults:
    """Run-time behaviour, changeable through ``POST /admin/faults``."""

    error_rate: float = 0.0
    error_status: int = 500
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0  # share of requests answered 200 with a truncated, unusable body
    stream_cut_rate: float = 0.0  # share of streams whose connection is dropped halfway, without [DONE]
    retry_after_s: float = 0.0  # when > 0, injected 429/503 errors carry Retry-After (whole seconds)
    latency_scale: float = 1.0
    extra_latency_ms: float = 0.0
    hang_seconds: float = 600.0
    ttft_fraction: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Any) -> None:
        """Apply ``changes`` (a JSON object) after validating all of it; ValueError if invalid."""
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of fault settings")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown fault setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        new = {**self.as_dict()}
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            new[name] = value
        check_faults(new)
        for name, value in new.items():
            setattr(self, name, int(value) if name == "error_status" else float(value))


def check_faults(values: dict[str, Any]) -> None:
    for name in ("error_rate", "timeout_rate", "malformed_rate", "stream_cut_rate", "ttft_fraction"):
        if not 0.0 <= values[name] <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {values[name]}")
    for name in ("latency_scale", "extra_latency_ms", "retry_after_s"):
        if not (values[name] >= 0.0 and math.isfinite(values[name])):
            raise ValueError(f"{name} must be a finite number >= 0, got {values[name]}")
    if not (values["hang_seconds"] > 0.0 and math.isfinite(values["hang_seconds"])):
        raise ValueError(f"hang_seconds must be a finite number > 0, got {values['hang_seconds']}")
    status = values["error_status"]
    if status != int(status) or not 400 <= int(status) <= 599:
        raise ValueError(f"error_status must be an HTTP error status (400-599), got {status}")


@dataclass
class Stats:
    requests: int = 0  # chat completion requests received
    completions: int = 0  # answered without streaming
    streams: int = 0  # answered as SSE streams
    self_eval: int = 0  # verification turns (also counted in completions/streams)
    recorded: int = 0  # prompts found in the file
    unknown_prompts: int = 0  # prompts answered from the hash
    bad_requests: int = 0
    model_not_found: int = 0
    injected_errors: int = 0
    injected_timeouts: int = 0
    injected_malformed: int = 0
    injected_stream_cuts: int = 0
    completions_cancelled: int = 0  # the client went away before a non-streamed answer
    streams_completed: int = 0
    streams_cancelled: int = 0  # the client closed the stream before [DONE]
    stream_tokens_sent: int = 0
    cancelled_stream_tokens_sent: int = 0  # tokens written to streams the client then closed
    in_flight: int = 0
    max_in_flight: int = 0  # the most chat requests open at once since the last reset
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reset(self) -> None:
        in_flight = self.in_flight
        for f in fields(self):
            setattr(self, f.name, {} if f.name == "by_kind" else 0)
        self.in_flight = self.max_in_flight = in_flight


# --- request parsing ---------------------------------------------------------------------------


class RequestError(Exception):
    """A request the simulator refuses, rendered as an OpenAI error body."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(slots=True)
class ChatRequest:
    system: str
    user: str
    verify: bool
    after_first_user: list[str]
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    max_tokens: int | None
    messages: list[Any]


def _text(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RequestError(
                    f"Invalid '{param}[{j}]': expected an object with a 'type'.",
                    f"{param}[{j}]",
                    "invalid_type",
                )
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(
                        f"Invalid '{param}[{j}].text': expected a string.",
                        f"{param}[{j}].text",
                        "invalid_type",
                    )
                parts.append(part["text"])
        return "\n".join(parts)
    raise RequestError(
        f"Invalid type for '{param}': expected a string or an array of content parts, "
        f"but got {_type_name(content)} instead.",
        param,
        "invalid_type",
    )


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise RequestError(
            f"Invalid type for '{name}': expected a boolean, but got {_type_name(v)} instead.",
            name,
            "invalid_type",
        )
    return v


def _opt_int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(
            f"Invalid type for '{name}': expected an integer, but got {_type_name(v)} instead.",
            name,
            "invalid_type",
        )
    if v < lo:
        raise RequestError(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got {v} instead.",
            name,
            "integer_below_min_value",
        )
    if hi is not None and v > hi:
        raise RequestError(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got {v} instead.",
            name,
            "integer_above_max_value",
        )
    return v


def parse_request(body: Any, model: str) -> ChatRequest:
    """Validate a chat-completions body for ``model``; raise :class:`RequestError` if unusable."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None, "invalid_type")
    req_model = body.get("model")
    if req_model is None:
        raise RequestError("You must provide a model parameter.", "model", "missing_required_parameter")
    if not isinstance(req_model, str):
        raise RequestError(
            f"Invalid type for 'model': expected a string, but got {_type_name(req_model)} instead.",
            "model",
            "invalid_type",
        )
    if req_model != model:
        raise RequestError(
            f"The model `{req_model}` does not exist or you do not have access to it. "
            f"This simulator serves `{model}`.",
            "model",
            "model_not_found",
            404,
        )
    messages = body.get("messages")
    if messages is None:
        raise RequestError(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise RequestError(
            f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise RequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    system: list[str] = []
    user: str | None = None
    after: list[str] = []
    roles_after: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RequestError(
                f"Invalid type for 'messages[{i}]': expected an object, but got {_type_name(msg)} instead.",
                f"messages[{i}]",
                "invalid_type",
            )
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError(
                f"Invalid value for 'messages[{i}].role': expected one of "
                f"{', '.join(repr(r) for r in sorted(ROLES))}, but got {role!r} instead.",
                f"messages[{i}].role",
                "invalid_value",
            )
        text = _text(msg.get("content"), f"messages[{i}].content")
        if role in SYSTEM_ROLES:
            system.append(text)
        elif user is None:
            if role == "user":
                user = text
        else:
            after.append(text)
            roles_after.append(role)
    if user is None:
        raise RequestError(
            "Invalid 'messages': the conversation needs at least one message with role 'user'.",
            "messages",
            "invalid_value",
        )
    # self-verification: an assistant turn after the first user prompt, then a final user turn
    verify = bool(roles_after) and roles_after[-1] == "user" and "assistant" in roles_after[:-1]

    stream = _opt_bool(body, "stream")
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise RequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if not isinstance(opts, dict):
            raise RequestError(
                f"Invalid type for 'stream_options': expected an object, but got {_type_name(opts)} instead.",
                "stream_options",
                "invalid_type",
            )
        include_usage = _opt_bool(opts, "include_usage")
    logprobs = _opt_bool(body, "logprobs")
    top = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise RequestError(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            "top_logprobs",
            "invalid_value",
        )
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1)
    n = _opt_int(body, "n", 1)
    if n is not None and n != 1:
        raise RequestError("The simulator answers with one choice: 'n' must be 1.", "n", "invalid_value")
    return ChatRequest(
        system="\n".join(system),
        user=user,
        verify=verify,
        after_first_user=after,
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        top_logprobs=top or 0,
        max_tokens=max_tokens,
        messages=messages,
    )


def error_body(message: str, etype: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    etype: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    return web.json_response(error_body(message, etype, param, code), status=status, dumps=_dumps)


def injected_error(status: int, retry_after_s: float = 0.0) -> web.Response:
    if status == 429:
        resp = error_response(
            429, "Rate limit reached (simulated fault).", "requests", None, "rate_limit_exceeded"
        )
    elif status >= 500:
        resp = error_response(
            status, "The server had an error while processing your request (simulated fault).", "server_error"
        )
    else:
        resp = error_response(status, f"Simulated fault: HTTP {status}.", "invalid_request_error")
    if retry_after_s > 0 and status in (429, 503):
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return resp


# --- the simulator -----------------------------------------------------------------------------


class Simulator:
    def __init__(
        self,
        data: SimData,
        faults: Faults | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        *,
        tool_call_logprobs: bool = False,
    ) -> None:
        self.data = data
        self.api_key = api_key  # when set, chat requests need "Authorization: Bearer <it>"
        # Serve logprobs for tool-call tokens (as vLLM does); OpenAI returns none for them.
        self.tool_call_logprobs = tool_call_logprobs
        self.model = data.model
        self.model_json = _dumps(data.model)
        self.faults = faults or Faults()
        self.stats = Stats()
        self.rng = random.Random(seed)
        self.started = int(time.time())
        self._id_prefix = os.urandom(8).hex()  # ids unique across processes, cheap per request
        self._ids = itertools.count(1)
        self.app = web.Application(middlewares=[self._errors], client_max_size=8 * 1024 * 1024)
        r = self.app.router
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/chat/completions", self.chat)
        r.add_get("/v1/models", self.models)
        r.add_get("/v1/models/{model}", self.model_info)
        r.add_get("/healthz", self.healthz)
        r.add_get("/admin/faults", self.get_faults)
        r.add_post("/admin/faults", self.set_faults)
        r.add_get("/admin/stats", self.get_stats)
        r.add_post("/admin/stats/reset", self.reset_stats)

    # --- plumbing --------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                message = f"Invalid URL ({request.method} {request.path})"
            elif exc.status == 405:
                message = f"Method {request.method} is not allowed for {request.path}"
            else:
                message = exc.text or exc.reason
            return error_response(exc.status, message)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("internal error serving %s %s", request.method, request.path)
            return error_response(500, f"internal simulator error: {type(err).__name__}", "server_error")

    # --- simple endpoints ------------------------------------------------------------------------

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.model, "prompts": self.data.prompts})

    def _model_object(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": self.started, "owned_by": "tierguard-sim"}

    async def models(self, _req: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_object()]})

    async def model_info(self, req: web.Request) -> web.Response:
        name = req.match_info["model"]
        if name != self.model:
            return error_response(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return web.json_response(self._model_object())

    async def get_faults(self, _req: web.Request) -> web.Response:
        return web.json_response(self.faults.as_dict())

    async def set_faults(self, req: web.Request) -> web.Response:
        try:
            changes = json.loads(await req.read())
        except ValueError:
            return error_response(400, "The request body is not valid JSON.")
        try:
            self.faults.update(changes)
        except ValueError as err:
            return error_response(400, str(err))
        log.info("faults now %s", self.faults.as_dict())
        return web.json_response(self.faults.as_dict())

    async def get_stats(self, _req: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def reset_stats(self, _req: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response(self.stats.as_dict())

    # --- chat completions ------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._chat(request)
        finally:
            stats.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        if self.api_key is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if given != self.api_key:
                stats.count("unauthorized")
                # as OpenAI does, the refusal quotes the key it was given (here in full: the
                # harshest case for a proxy that must not pass it on)
                return error_response(
                    401, f"Incorrect API key provided: {given or '(none)'}.", "invalid_request_error",
                    None, "invalid_api_key",
                )  # fmt: skip
        try:
            body = json.loads(await request.read())
        except ValueError:
            stats.bad_requests += 1
            stats.count("bad_request")
            return error_response(
                400,
                "We could not parse the JSON body of your request. The simulator expects a JSON payload.",
            )
        try:
            req = parse_request(body, self.model)
        except RequestError as err:
            if err.status == 404:
                stats.model_not_found += 1
                stats.count("model_not_found")
            else:
                stats.bad_requests += 1
                stats.count("bad_request")
            return error_response(err.status, err.message, param=err.param, code=err.code)

        verify = req.verify
        found = self.data.lookup_conversation(req.messages)
        if found is not None:
            reply, verify = found
            stats.recorded += 1
        else:
            looked_up = self.data.lookup(req.system, req.user)
            if looked_up is None:
                stats.unknown_prompts += 1
                reply = unknown_reply(req.system, req.user, self.data.default_latency_ms)
            else:
                reply = looked_up
                stats.recorded += 1
        if reply.tool_calls is not None and not verify:
            stats.count("tool_call")
        prompt_tokens = reply.tokens_in
        if verify:
            stats.self_eval += 1
            stats.count("self_eval")
            prompt_tokens += estimate_tokens(*req.after_first_user)
            reply = reply.verification()
        if req.stream:
            stats.streams += 1
            stats.count("stream")
        else:
            stats.completions += 1
            stats.count("completion")

        faults = self.faults
        if faults.error_rate > 0.0 and self.rng.random() < faults.error_rate:
            stats.injected_errors += 1
            return injected_error(faults.error_status, faults.retry_after_s)
        if faults.malformed_rate > 0.0 and self.rng.random() < faults.malformed_rate:
            stats.injected_malformed += 1
            return web.Response(body=b'{"id": "chatcmpl-x", "choices": [', content_type="application/json")
        if faults.timeout_rate > 0.0 and self.rng.random() < faults.timeout_rate:
            stats.injected_timeouts += 1
            try:
                await asyncio.sleep(faults.hang_seconds)
            except asyncio.CancelledError:
                stats.completions_cancelled += 0 if req.stream else 1
                raise
            return error_response(504, "The simulated model did not answer in time.", "timeout")

        delay_s = (reply.latency_ms * faults.latency_scale + faults.extra_latency_ms) / 1000.0
        if req.stream:
            cut = faults.stream_cut_rate > 0.0 and self.rng.random() < faults.stream_cut_rate
            return await self._stream(request, req, reply, prompt_tokens, delay_s, cut=cut)
        if delay_s > 0.0:
            try:
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                stats.completions_cancelled += 1
                raise
        return web.Response(
            body=self._completion(req, reply, prompt_tokens).encode("utf-8"), content_type="application/json"
        )

    def _new_id(self) -> str:
        return f"chatcmpl-{self._id_prefix}{next(self._ids):08x}"

    def _completion(self, req: ChatRequest, reply: Reply, prompt_tokens: int) -> str:
        n = len(reply.tokens)
        top = req.top_logprobs
        calls = reply.tool_calls is not None
        want_logprobs = req.logprobs and (self.tool_call_logprobs or not calls)
        if req.max_tokens is not None and req.max_tokens < n:
            cut: int | None = req.max_tokens
            content_json = _dumps("".join(reply.tokens[: req.max_tokens]))
            finish = "length"
            completion_tokens = req.max_tokens
            logprobs = (
                _dumps({"content": reply.entries(top)[: req.max_tokens], "refusal": None})
                if want_logprobs
                else "null"
            )
        else:
            cut = None
            content_json = reply.text_json
            finish = "tool_calls" if calls else "stop"
            completion_tokens = reply.tokens_out
            logprobs = reply.logprobs_json(top) if want_logprobs else "null"
        if calls:
            message = _dumps(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": reply.message_tool_calls(cut),
                    "refusal": None,
                }
            )
        else:
            message = f'{{"role":"assistant","content":{content_json},"refusal":null}}'
        usage = _usage(prompt_tokens, completion_tokens)
        return (
            f'{{"id":"{self._new_id()}","object":"chat.completion","created":{int(time.time())},'
            f'"model":{self.model_json},"system_fingerprint":"{FINGERPRINT}","choices":[{{"index":0,'
            f'"message":{message},'
            f'"logprobs":{logprobs},"finish_reason":"{finish}"}}],"usage":{usage}}}'
        )

    async def _stream(
        self,
        request: web.Request,
        req: ChatRequest,
        reply: Reply,
        prompt_tokens: int,
        delay_s: float,
        *,
        cut: bool = False,
    ) -> web.StreamResponse:
        """Stream the reply; with ``cut``, drop the connection after half of the tokens (at least
        one), as a crashed model server or a broken network path would."""
        stats = self.stats
        tokens = reply.tokens
        calls = reply.tool_calls is not None
        want_logprobs = req.logprobs and (self.tool_call_logprobs or not calls)
        parts = reply.stream_parts(req.top_logprobs if want_logprobs else None)
        finish = "tool_calls" if calls else "stop"
        completion_tokens = reply.tokens_out
        if req.max_tokens is not None and req.max_tokens < len(tokens):
            tokens = tokens[: req.max_tokens]
            finish = "length"
            completion_tokens = req.max_tokens
        n = len(tokens)

        head = (
            f'data: {{"id":"{self._new_id()}","object":"chat.completion.chunk","created":{int(time.time())},'
            f'"model":{self.model_json},"system_fingerprint":"{FINGERPRINT}","choices":['
        )
        tail = ',"usage":null}\n\n' if req.include_usage else "}\n\n"

        # schedule: the first token after max(ttft_fraction, 1/n) of the delay, the last at the delay
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = max(self.faults.ttft_fraction, 1.0 / n) * delay_s if n else delay_s
        step = (delay_s - first) / (n - 1) if n > 1 else 0.0

        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        written = 0  # tokens written to the connection
        queued = 0  # tokens in ``pending``, not yet written
        pending: list[str] = [
            head
            + '{"index":0,"delta":{"role":"assistant","content":'
            + ("null" if calls else '""')
            + ',"refusal":null},'
            + '"logprobs":null,"finish_reason":null}]'
            + tail
        ]
        try:
            await resp.prepare(request)
            for i in range(n):
                if cut and i >= max(1, n // 2):
                    await resp.write("".join(pending).encode("utf-8"))
                    stats.injected_stream_cuts += 1
                    stats.stream_tokens_sent += queued
                    if request.transport is not None:
                        request.transport.abort()  # no [DONE], no chunked terminator
                    return resp
                due = start + first + step * i
                if due > loop.time():
                    await resp.write("".join(pending).encode("utf-8"))
                    written += queued
                    stats.stream_tokens_sent += queued
                    queued = 0
                    pending.clear()
                    await asyncio.sleep(due - loop.time())
                pending.append(head + '{"index":0,' + parts[i] + ',"finish_reason":null}]' + tail)
                queued += 1
            if n == 0 and delay_s > 0:
                await resp.write("".join(pending).encode("utf-8"))
                pending.clear()
                await asyncio.sleep(delay_s)
            pending.append(
                head + f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}]' + tail
            )
            if req.include_usage:
                pending.append(head + '],"usage":' + _usage(prompt_tokens, completion_tokens) + "}\n\n")
            pending.append("data: [DONE]\n\n")
            await resp.write("".join(pending).encode("utf-8"))
            written += queued
            stats.stream_tokens_sent += queued
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionError) as err:
            stats.streams_cancelled += 1
            stats.cancelled_stream_tokens_sent += written
            if isinstance(err, asyncio.CancelledError):
                raise
            return resp
        stats.streams_completed += 1
        return resp


def _usage(prompt_tokens: int, completion_tokens: int) -> str:
    return (
        f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
        f'"total_tokens":{prompt_tokens + completion_tokens}}}'
    )


async def serve(sim: Simulator, host: str, port: int) -> web.AppRunner:
    """Start ``sim`` on ``host:port`` in the running loop; the caller cleans the runner up."""
    runner = web.AppRunner(sim.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
