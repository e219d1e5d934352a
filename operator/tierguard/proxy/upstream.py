"""Calls to one tier's OpenAI-compatible endpoint, with failures classified, never raised raw."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..policy import Tier
from ..toolcalls import StreamedToolCalls


class TierFailure(Exception):
    """A tier call that produced no usable answer. ``status`` is what the client should see if
    this was the last tier."""

    def __init__(self, kind: str, message: str, status: int, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # timeout | connect | http_429 | http_5xx | http_4xx | client_error | malformed
        self.status = status
        self.retry_after = retry_after  # the tier's Retry-After (429/503), passed on by the last tier
        self.latency_s = 0.0  # how long the call ran before it failed, where the caller timed it


# Upstream statuses that blame the request itself (bad parameters, too large): the client's
# mistake, answered at once and not counted as a tier error. Other 4xx (401/403/404: a tier
# misconfigured, e.g. a wrong model name) are tier errors.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


def resolve_api_key(tier: Tier) -> str | None:
    src = tier.api_key
    if src is None:
        return None
    if src.env is not None:
        value = os.environ.get(src.env)
        if value is None:
            raise ValueError(f"tier {tier.name}: API key environment variable {src.env} is not set")
        return value
    assert src.file is not None
    try:
        return Path(src.file).read_text().strip()
    except OSError as err:
        raise ValueError(f"tier {tier.name}: cannot read API key file {src.file}: {err.strerror}") from None


@dataclass
class Completion:
    body: dict[str, Any]
    logprobs: list[float]
    latency_s: float
    tokens_in: int
    tokens_out: int


def message_text(body: dict[str, Any]) -> str:
    """The answer text of a (non-streamed) chat completion; empty when it has none."""
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def token_logprobs(choice: dict[str, Any]) -> list[float]:
    """The per-token log-probabilities of a choice; ValueError when they are present but malformed."""
    lp = choice.get("logprobs")
    if lp is None:
        return []
    content = lp.get("content") if isinstance(lp, dict) else None
    if content is None:
        return []
    if not isinstance(content, list):
        raise ValueError("logprobs.content is not a list")
    out = []
    for t in content:
        value = t.get("logprob") if isinstance(t, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value <= 1e-6:
            raise ValueError("a token logprob is not a log-probability")
        out.append(float(value))
    return out


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a token count is not a non-negative integer")
    return value


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    if not isinstance(usage, dict):
        raise ValueError("usage is not an object")
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _transport_failure(tier: str, err: Exception) -> TierFailure:
    if isinstance(err, TimeoutError):
        return TierFailure("timeout", f"tier {tier} timed out", 504)
    return TierFailure("connect", f"tier {tier} unreachable: {type(err).__name__}", 502)


@dataclass
class StreamState:
    """What has arrived so far from a streaming tier."""

    chunks: list[bytes] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tool_calls: StreamedToolCalls = field(default_factory=StreamedToolCalls)
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def usage(self) -> tuple[int, int]:
        """(input, output) tokens; output counted from the logprobs when the tier sent no usage."""
        return self.tokens_in, self.tokens_out or len(self.logprobs)


ConnectionKey = tuple[str, str, str, int]


def connection_key(tier: Tier) -> ConnectionKey:
    """What makes two tiers the same upstream: endpoint, model, credentials source and concurrency
    limit. Name, prices, timeout and confidence settings are not part of it, so a canary that only
    moves a threshold shares its stable's connection (and ``maxConcurrency`` holds across both)."""
    key_source = tier.api_key.model_dump_json() if tier.api_key is not None else ""
    return (tier.base_url.rstrip("/"), tier.model, key_source, tier.max_concurrency)


class TierConnection:
    """One upstream endpoint: URL, credentials and the concurrency limit every revision using it shares."""

    def __init__(self, tier: Tier, session: aiohttp.ClientSession) -> None:
        self.key = connection_key(tier)
        self.session = session
        self.url = tier.base_url.rstrip("/") + "/chat/completions"
        self.semaphore = asyncio.Semaphore(tier.max_concurrency)
        self.api_key: str | None = None
        self.headers: dict[str, str] = {}
        self.refresh_key(tier)

    def refresh_key(self, tier: Tier) -> bool:
        """Read the tier's API key again (a mounted Secret rotates its file in place); True when
        it changed. Raises ValueError when it cannot be read (nothing changes then)."""
        key = resolve_api_key(tier)
        if key == self.api_key and self.headers:
            return False
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.api_key, self.headers = key, headers  # one swap: a request reads one or the other
        return True


class TierClient:
    """One revision's tier (its name, prices, timeout) over a possibly shared :class:`TierConnection`."""

    def __init__(
        self, tier: Tier, session: aiohttp.ClientSession, connection: TierConnection | None = None
    ) -> None:
        self.tier = tier
        self.connection = connection if connection is not None else TierConnection(tier, session)
        self.session = self.connection.session
        self.url = self.connection.url
        self.semaphore = self.connection.semaphore
        self.headers = self.connection.headers
        self.api_key = self.connection.api_key  # the key these headers carry (redacted from errors)
        self.timeout = aiohttp.ClientTimeout(total=tier.timeout_seconds)

    def _payload(self, request: dict[str, Any], *, stream: bool, logprobs: bool) -> bytes:
        body = dict(request)
        body["model"] = self.tier.model
        body["stream"] = stream
        if logprobs:
            body["logprobs"] = True
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return json.dumps(body).encode()

    async def complete(self, request: dict[str, Any], *, logprobs: bool = True) -> Completion:
        data = self._payload(request, stream=False, logprobs=logprobs)
        start = time.perf_counter()
        async with self.semaphore:
            try:
                async with self.session.post(
                    self.url, data=data, headers=self.headers, timeout=self.timeout
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After") if status != 200 else None
            except (TimeoutError, aiohttp.ClientError) as err:
                raise _transport_failure(self.tier.name, err) from None
        latency = time.perf_counter() - start
        _check_status(self.tier.name, status, raw, self.api_key, retry_after)
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            if not isinstance(choice.get("message"), dict):
                raise ValueError("no message")
            tin, tout = _usage(body)
            logprobs_ = token_logprobs(choice)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TierFailure("malformed", f"tier {self.tier.name} sent a malformed reply", 502) from None
        return Completion(body, logprobs_, latency, tin, tout)

    async def stream(
        self, request: dict[str, Any], state: StreamState, *, logprobs: bool = True
    ) -> AsyncGenerator[bytes, None]:
        """Yield raw SSE event blocks (``data: {...}\\n\\n``) as they arrive, updating ``state``.

        Closing the generator early closes the upstream connection (early abort).
        """
        data = self._payload(request, stream=True, logprobs=logprobs)
        async with self.semaphore:
            try:
                async with self.session.post(
                    self.url, data=data, headers=self.headers, timeout=self.timeout
                ) as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        retry_after = resp.headers.get("Retry-After")
                        _check_status(self.tier.name, resp.status, raw, self.api_key, retry_after)
                    buf = b""
                    async for piece in resp.content.iter_any():
                        buf += piece
                        while b"\n\n" in buf:
                            event, buf = buf.split(b"\n\n", 1)
                            if _absorb(event, state):
                                yield event + b"\n\n"
                    if buf.strip() and _absorb(buf, state):
                        yield buf + b"\n\n"
            except (TimeoutError, aiohttp.ClientError) as err:
                raise _transport_failure(self.tier.name, err) from None


def _absorb(event: bytes, state: StreamState) -> bool:
    """Parse one SSE event into ``state``; True if it is a data chunk to forward."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return False
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise TierFailure("malformed", "malformed stream chunk", 502) from None
        if not isinstance(chunk, dict):
            raise TierFailure("malformed", "malformed stream chunk", 502)
        try:
            if chunk.get("usage"):
                state.tokens_in, state.tokens_out = _usage(chunk)
            choices = chunk.get("choices") or []
            if not isinstance(choices, list):
                raise ValueError("choices is not a list")
            for choice in choices:
                state.logprobs.extend(token_logprobs(choice))
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str):
                    state.text.append(delta["content"])
                if delta.get("tool_calls") is not None:
                    state.tool_calls.add(delta["tool_calls"])
        except (ValueError, TypeError, AttributeError):
            raise TierFailure("malformed", "malformed stream chunk", 502) from None
        state.chunks.append(payload)
        return True
    return False


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` (an upstream may quote the API key it was sent in its error)."""
    return text.replace(secret, "[redacted]") if secret else text


def _check_status(
    tier: str, status: int, raw: bytes, secret: str | None = None, retry_after: str | None = None
) -> None:
    if status == 200:
        return
    if status == 429:
        # Retry-After is kept when it is what RFC 9110 allows (seconds or an HTTP date), short
        wait = retry_after.strip() if retry_after and len(retry_after) <= 64 else None
        raise TierFailure("http_429", f"tier {tier} is rate limited", 429, wait if wait else None)
    kind = "client_error" if status in CLIENT_FAULT_STATUSES else "http_4xx"
    if status >= 500:
        raise TierFailure("http_5xx", f"tier {tier} failed with HTTP {status}", 502)
    # a 4xx from upstream: the request itself was refused (pass the status through)
    message = f"tier {tier} refused the request with HTTP {status}"
    try:
        err = json.loads(raw).get("error", {})
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message += f": {redact(err['message'], secret)[:300]}"
    except (ValueError, AttributeError):
        pass
    raise TierFailure(kind, message, status)
