"""What the simulator answers: recorded outcomes indexed by prompt, prepared once at load time.

Everything a request needs (tokens, per-token log-probabilities, usage, latency) is computed
here when the file is loaded, so serving a request is a dictionary lookup plus string
formatting. See docs/outcomes-format.md for the rules implemented here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..outcomes import ModelOutcome, OutcomeRecord, Outcomes, conversation_key, prompt_key

# Whitespace-prefixed words or single punctuation characters; trailing whitespace is its own
# token. Concatenating the tokens gives back the text exactly.
_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

# Confidence used when a recorded outcome has ``conf_logprob: null`` (the model produced no
# usable confidence): low enough that any sensible threshold escalates.
NULL_CONF_PROB = 0.01
NULL_CONF_LOGPROB = math.log(NULL_CONF_PROB)

# Log-probability of the tokens that do not carry the recorded confidence.
FILLER_LOGPROB = math.log(0.999)

# The share of tokens that carry the recorded log-probability, at least. Any aggregation by
# ``min`` or by a quantile at or below this level then returns the recorded confidence.
CARRIER_SHARE = 0.2

# Latency of an unknown prompt when the file records none for the model.
FALLBACK_LATENCY_MS = 500.0

# Smallest probability written as a log-probability (log(0) is not JSON).
_MIN_PROB = 1e-12

# Alternatives listed in ``top_logprobs`` after the chosen token.
_LETTERS = ("A", "B", "C", "D", "E")
_WORD_ALTERNATIVES = (" the", " a", ".", ",", " and", " is", " of", " to", " in", " it")


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into simple tokens (``"B"`` is one token, ``" answer"`` another)."""
    return _TOKEN_RE.findall(text)


def carrier_positions(n: int, share: float = CARRIER_SHARE) -> list[int]:
    """Evenly spaced token positions, the first included, that carry the recorded logprob.

    ``k = ceil(share * (n - 1)) + 1`` positions: with the k lowest probabilities equal to p, the
    linear-interpolated quantile at any level q <= share lies between sorted positions that are
    both < k, so it equals p (and so does the minimum).
    """
    if n <= 0:
        return []
    k = min(n, math.ceil(share * (n - 1)) + 1)
    return sorted({(i * n) // k for i in range(k)})


def token_logprobs(n: int, conf_logprob: float) -> list[float]:
    """Per-token log-probabilities whose min / low quantiles reproduce ``conf_logprob``."""
    filler = max(FILLER_LOGPROB, conf_logprob)
    out = [filler] * n
    for i in carrier_positions(n):
        out[i] = conf_logprob
    return out


def _safe_log(p: float) -> float:
    return math.log(max(p, _MIN_PROB))


def _alternatives(token: str, logprob: float, k: int) -> list[tuple[str, float]]:
    """The chosen token plus up to k-1 invented alternatives sharing the remaining mass,
    in descending order of probability (the chosen token first)."""
    out = [(token, logprob)]
    if k <= 1:
        return out
    stripped = token.strip()
    pool: Sequence[str]
    if len(stripped) == 1 and stripped.upper() in _LETTERS:
        prefix = token[: len(token) - len(stripped)]
        pool = [prefix + c for c in _LETTERS if c != stripped.upper()]
    else:
        pool = [w for w in _WORD_ALTERNATIVES if w != token]
    prev = math.exp(logprob)
    remaining = max(0.0, 1.0 - prev)
    for alt in pool[: k - 1]:
        v = min(prev, remaining * 0.6)
        remaining -= v
        prev = v
        out.append((alt, _safe_log(v)))
    return out


def _entry(token: str, logprob: float, top_k: int) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
            for t, lp in (_alternatives(token, logprob, top_k) if top_k > 0 else [])
        ],
    }


@dataclass(slots=True)
class Reply:
    """One prepared answer: tokens, their log-probabilities, usage and latency.

    ``top_logprobs`` overrides the invented alternatives for single-token replies (the
    self-verification reply lists both "Y" and "N").
    """

    text: str
    tokens: list[str]
    logprobs: list[float]
    tokens_in: int
    tokens_out: int
    latency_ms: float
    recorded: bool
    conf_logprob: float
    top_logprobs: list[tuple[str, float]] | None = None
    # A tool-call answer: (name, arguments) per call; ``tokens`` are then the arguments' tokens,
    # call k owning tokens[call_starts[k]:call_starts[k + 1]].
    tool_calls: list[tuple[str, str]] | None = None
    call_starts: list[int] = field(default_factory=list)
    text_json: str = field(init=False, default="")
    _entries: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _logprobs_json: dict[int, str] = field(default_factory=dict)
    _stream_parts: dict[int | None, list[str]] = field(default_factory=dict)
    _verification: Reply | None = None

    def __post_init__(self) -> None:
        self.text_json = _compact(self.text)

    def entries(self, top_k: int) -> list[dict[str, Any]]:
        """``choices[0].logprobs.content`` for this reply (cached per ``top_k``)."""
        cached = self._entries.get(top_k)
        if cached is None:
            if self.top_logprobs is not None:
                cached = []
                for tok, lp in zip(self.tokens, self.logprobs, strict=True):
                    e = _entry(tok, lp, 0)
                    e["top_logprobs"] = [
                        {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                        for t, v in self.top_logprobs[:top_k]
                    ]
                    cached.append(e)
            else:
                cached = [_entry(t, lp, top_k) for t, lp in zip(self.tokens, self.logprobs, strict=True)]
            self._entries[top_k] = cached
        return cached

    def logprobs_json(self, top_k: int) -> str:
        """``{"content": [...], "refusal": null}`` serialised (cached per ``top_k``)."""
        cached = self._logprobs_json.get(top_k)
        if cached is None:
            cached = _compact({"content": self.entries(top_k), "refusal": None})
            self._logprobs_json[top_k] = cached
        return cached

    def stream_parts(self, top_k: int | None) -> list[str]:
        """Per token, the ``"delta":...,"logprobs":...`` part of its stream chunk (cached).

        ``top_k`` None: no logprobs requested.
        """
        cached = self._stream_parts.get(top_k)
        if cached is None:
            tokens = (
                [_compact(d) for d in self.tool_call_deltas()]
                if self.tool_calls is not None
                else [_compact({"content": t}) for t in self.tokens]
            )
            if top_k is None:
                cached = [f'"delta":{t},"logprobs":null' for t in tokens]
            else:
                entries = [_compact(e) for e in self.entries(top_k)]
                cached = [
                    f'"delta":{t},"logprobs":{{"content":[{e}],"refusal":null}}'
                    for t, e in zip(tokens, entries, strict=True)
                ]
            self._stream_parts[top_k] = cached
        return cached

    def call_of_token(self, i: int) -> int:
        """The index of the tool call that token ``i`` belongs to."""
        k = 0
        while k + 1 < len(self.call_starts) and self.call_starts[k + 1] <= i:
            k += 1
        return k

    def tool_call_deltas(self) -> list[dict[str, Any]]:
        """Per token, the stream ``delta`` of a tool-call answer: a call's first token carries its
        id, type and name (as OpenAI's first chunk of a call does), the others an arguments piece."""
        assert self.tool_calls is not None
        out: list[dict[str, Any]] = []
        for i, tok in enumerate(self.tokens):
            k = self.call_of_token(i)
            piece: dict[str, Any] = {"index": k, "function": {"arguments": tok}}
            if i == self.call_starts[k]:
                piece = {
                    "index": k,
                    "id": call_id(self.text, k),
                    "type": "function",
                    "function": {"name": self.tool_calls[k][0], "arguments": tok},
                }
            out.append({"tool_calls": [piece]})
        return out

    def message_tool_calls(self, n_tokens: int | None = None) -> list[dict[str, Any]]:
        """``message.tool_calls`` of a whole answer (or of its first ``n_tokens`` tokens)."""
        assert self.tool_calls is not None
        limit = len(self.tokens) if n_tokens is None else n_tokens
        out = []
        for k, (name, _args) in enumerate(self.tool_calls):
            start = self.call_starts[k]
            if start >= limit and k > 0:
                break
            end = self.call_starts[k + 1] if k + 1 < len(self.call_starts) else len(self.tokens)
            args = "".join(self.tokens[start : min(end, limit)])
            out.append(
                {
                    "id": call_id(self.text, k),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            )
        return out

    def verification(self) -> Reply:
        """The one-token reply to "is your answer correct?": "Y" if p >= 0.5 else "N"."""
        if self._verification is None:
            self._verification = verification_reply(
                self.conf_logprob, self.tokens_in, self.latency_ms, recorded=self.recorded
            )
        return self._verification


def call_id(text: str, k: int) -> str:
    """A stable tool-call id (same answer, same ids, in every process)."""
    return "call_" + hashlib.sha256(f"{k}\x00{text}".encode()).hexdigest()[:24]


def outcome_reply(rec: OutcomeRecord, o: ModelOutcome, default_latency: float) -> Reply:
    """The prepared reply of one recorded outcome (text or tool calls)."""
    tokens_in = (
        o.tokens_in if o.tokens_in is not None else estimate_tokens(rec.system_prompt or "", rec.user_prompt)
    )
    latency = o.latency_ms if o.latency_ms is not None else default_latency
    if o.tool_calls:
        return make_reply(
            "",
            o.conf_logprob,
            calls=[(c.name, c.arguments) for c in o.tool_calls],
            tokens_in=tokens_in,
            tokens_out=o.tokens_out,
            latency_ms=latency,
            recorded=True,
        )
    return make_reply(
        o.answer,
        o.conf_logprob,
        tokens_in=tokens_in,
        tokens_out=o.tokens_out,
        latency_ms=latency,
        recorded=True,
    )


def verification_reply(conf_logprob: float, tokens_in: int, latency_ms: float, *, recorded: bool) -> Reply:
    p = math.exp(conf_logprob)
    lp_y, lp_n = conf_logprob, _safe_log(1.0 - p)
    top = [("Y", lp_y), ("N", lp_n)] if p >= 0.5 else [("N", lp_n), ("Y", lp_y)]
    token, lp = top[0]
    return Reply(
        text=token,
        tokens=[token],
        logprobs=[lp],
        tokens_in=tokens_in,
        tokens_out=1,
        latency_ms=latency_ms,
        recorded=recorded,
        conf_logprob=conf_logprob,
        top_logprobs=top,
    )


def make_reply(
    text: str,
    conf_logprob: float | None,
    *,
    tokens_in: int,
    tokens_out: int | None,
    latency_ms: float,
    recorded: bool,
    calls: Sequence[tuple[str, str]] | None = None,
) -> Reply:
    """A prepared answer: ``text``, or with ``calls`` a tool-call answer whose tokens are the
    calls' argument tokens (at least one per call)."""
    lp = NULL_CONF_LOGPROB if conf_logprob is None else conf_logprob
    starts: list[int] = []
    if calls is None:
        tokens = tokenize(text)
    else:
        tokens = []
        for _name, args in calls:
            starts.append(len(tokens))
            tokens += tokenize(args) or [args]
        text = _compact([[n, a] for n, a in calls])  # identifies the answer (ids derive from it)
    return Reply(
        text=text,
        tokens=tokens,
        logprobs=token_logprobs(len(tokens), lp),
        tokens_in=tokens_in,
        tokens_out=len(tokens) if tokens_out is None else tokens_out,
        latency_ms=latency_ms,
        recorded=recorded,
        conf_logprob=lp,
        tool_calls=None if calls is None else list(calls),
        call_starts=starts,
    )


def estimate_tokens(*texts: str) -> int:
    return sum(len(tokenize(t)) for t in texts)


def unknown_reply(system: str, user: str, default_latency_ms: float) -> Reply:
    """A deterministic answer for a prompt the file does not hold.

    From SHA-256 of the whitespace-normalised prompt key: the first 4 bytes give the
    confidence p = 0.05 + 0.9 * u (u uniform in [0, 1)), the next 4 bytes a reference shown
    in the answer text.
    """
    digest = hashlib.sha256(prompt_key(system or None, user).encode("utf-8")).digest()
    u = int.from_bytes(digest[:4], "big") / 2**32
    p = 0.05 + 0.9 * u
    text = f"Simulated answer {digest[4:8].hex()}: no recorded outcome for this prompt."
    return make_reply(
        text,
        math.log(p),
        tokens_in=estimate_tokens(system, user),
        tokens_out=None,
        latency_ms=default_latency_ms,
        recorded=False,
    )


@dataclass
class SimData:
    """The replies of one model, by prompt key (system + user, and user alone), and, for rows
    that record a whole conversation (``messages``), by :func:`conversation_key`."""

    model: str
    path: str
    by_key: dict[str, Reply]
    by_user: dict[str, Reply]
    default_latency_ms: float
    duplicates: int = 0
    by_conversation: dict[str, Reply] = field(default_factory=dict)

    @property
    def prompts(self) -> int:
        return len(self.by_key) + len(self.by_conversation)

    def lookup_conversation(self, messages: Sequence[Any]) -> tuple[Reply, bool] | None:
        """A recorded conversation turn: (reply, False) for the conversation itself, or
        (reply, True) when ``messages`` is a recorded conversation followed by a verification
        question (a final user turn, after the proposed answer as an assistant turn or not)."""
        if not self.by_conversation:
            return None
        reply = self.by_conversation.get(conversation_key(messages))
        if reply is not None:
            return reply, False
        if len(messages) < 2 or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            return None
        head = list(messages[:-1])
        reply = self.by_conversation.get(conversation_key(head))
        if reply is None and isinstance(head[-1], dict) and head[-1].get("role") == "assistant":
            reply = self.by_conversation.get(conversation_key(head[:-1]))
        return None if reply is None else (reply, True)

    def lookup(self, system: str, user: str) -> Reply | None:
        reply = self.by_key.get(prompt_key(system or None, user))
        if reply is None:
            reply = self.by_user.get(prompt_key(None, user))
        return reply

    @classmethod
    def build(cls, outcomes: Outcomes, model: str) -> SimData:
        by_key: dict[str, Reply] = {}
        by_user: dict[str, Reply] = {}
        latencies = [
            o.latency_ms
            for r in outcomes.records
            if (o := r.models.get(model)) is not None and o.latency_ms is not None
        ]
        default_latency = statistics.median(latencies) if latencies else FALLBACK_LATENCY_MS
        duplicates = 0
        by_conversation: dict[str, Reply] = {}
        for rec in outcomes.records:
            o = rec.models.get(model)
            if o is None:
                continue
            if rec.messages is not None:
                ckey = conversation_key(rec.messages)
                if ckey in by_conversation:
                    duplicates += 1
                else:
                    by_conversation[ckey] = outcome_reply(rec, o, default_latency)
                continue
            key = prompt_key(rec.system_prompt, rec.user_prompt)
            if key in by_key:
                duplicates += 1
                continue
            reply = outcome_reply(rec, o, default_latency)
            reply.logprobs_json(0)  # the common case (logprobs without alternatives), ready to send
            by_key[key] = reply
            by_user.setdefault(prompt_key(None, rec.user_prompt), reply)
        return cls(model, outcomes.path, by_key, by_user, default_latency, duplicates, by_conversation)
