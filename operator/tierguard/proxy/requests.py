"""What the proxy accepts from a client: reading a JSON body, and the checks on a chat request.

:func:`read_json` reads a body (within ``settings.maxBodyBytes``) as JSON; :func:`validate_request`
checks the parts of a chat-completions request the cascade relies on. Both raise
:class:`BadRequest` (answered 400, or 413 for ``reason="too_large"``, with an OpenAI-style error
naming ``param``). A new request field the cascade starts to rely on gets its check here, next to
the others; ``reason`` becomes the label of ``tierguard_bad_requests_total``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from ..agent_requests import agent_request_error

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


class BadRequest(Exception):
    def __init__(
        self, message: str, param: str | None = None, reason: str = "invalid_request", code: str | None = None
    ) -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason
        self.code = code


async def read_json(request: web.Request) -> Any:
    """The request's body parsed as JSON; BadRequest when it is too large or not JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest("request body too large", reason="too_large") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON", reason="bad_json") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise BadRequest("the request body is nested too deeply", reason="bad_json") from None
    if b"\\u" in raw and _has_lone_surrogate(raw):
        raise BadRequest("the request body holds an unpaired UTF-16 surrogate escape", reason="bad_json")
    return body


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(raw: bytes) -> bool:
    """True when a ``\\uD800``-``\\uDFFF`` escape does not form a pair (json.loads accepts it; the
    resulting string cannot be encoded as UTF-8 for a tier). Only bodies with such escapes pay."""
    if not _SURROGATE.search(raw):
        return False
    try:
        json.dumps(json.loads(raw), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def read_chat_request(request: web.Request) -> dict[str, Any]:
    """A chat-completions request's body, read and checked."""
    return validate_request(await read_json(request))


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
    for key, (lo, hi) in NUMBER_RANGES.items():
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadRequest(f"'{key}' must be a number", key)
        if not lo <= v <= hi:
            raise BadRequest(f"'{key}' must be between {lo:g} and {hi:g}, got {v:g}", key)
    _check_openai_fields(body)
    agent_fields(body)
    return body


# Ranges the OpenAI chat-completions API enforces (a request it would refuse is refused here too,
# not forwarded to tiers that might each answer it differently).
NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
MAX_STOP = 4


def _check_openai_fields(body: dict[str, Any]) -> None:
    """Types of the other fields the OpenAI API checks, as it checks them."""
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("'model' must be a string", "model")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer", "seed")
    stop = body.get("stop")
    if stop is not None and not _stop_ok(stop):
        raise BadRequest(f"'stop' must be a string or an array of at most {MAX_STOP} strings", "stop")
    bias = body.get("logit_bias")
    if bias is not None and not _bias_ok(bias):
        raise BadRequest("'logit_bias' must map token ids to numbers from -100 to 100", "logit_bias")
    for key in ("response_format", "metadata"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise BadRequest(f"'{key}' must be an object", key)
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise BadRequest("'tools' must be an array", "tools")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise BadRequest("'tool_choice' must be a string or an object", "tool_choice")


def agent_fields(body: dict[str, Any]) -> None:
    """tools, tool_choice, parallel_tool_calls, response_format, tool messages and unsupported
    features, as the OpenAI API checks them (:mod:`tierguard.agent_requests`)."""
    problem = agent_request_error(body)
    if problem is not None:
        message, param, code = problem
        reason = "unsupported" if code == "unsupported_parameter" else "invalid_agent_field"
        raise BadRequest(message, param, reason=reason, code=code)


def parse_feedback(body: Any) -> tuple[Any, str]:
    """The (id, rating) of a ``/v1/feedback`` body; the id is checked by the signer."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    rating = body.get("rating")
    if rating not in ("up", "down"):
        raise BadRequest("'rating' must be 'up' or 'down'", "rating")
    return body.get("id"), rating


def _stop_ok(stop: Any) -> bool:
    if isinstance(stop, str):
        return True
    return isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop)


def _bias_ok(bias: Any) -> bool:
    return isinstance(bias, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and -100 <= v <= 100 for v in bias.values()
    )
