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

from ..outcomes import Outcomes, prompt_key

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
            tokens = [_compact({"content": t}) for t in self.tokens]
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

    def verification(self) -> Reply:
        """The one-token reply to "is your answer correct?": "Y" if p >= 0.5 else "N"."""
        if self._verification is None:
            self._verification = verification_reply(
                self.conf_logprob, self.tokens_in, self.latency_ms, recorded=self.recorded
            )
        return self._verification


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
) -> Reply:
    lp = NULL_CONF_LOGPROB if conf_logprob is None else conf_logprob
    tokens = tokenize(text)
    return Reply(
        text=text,
        tokens=tokens,
        logprobs=token_logprobs(len(tokens), lp),
        tokens_in=tokens_in,
        tokens_out=len(tokens) if tokens_out is None else tokens_out,
        latency_ms=latency_ms,
        recorded=recorded,
        conf_logprob=lp,
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
    """The replies of one model, by prompt key (system + user, and user alone)."""

    model: str
    path: str
    by_key: dict[str, Reply]
    by_user: dict[str, Reply]
    default_latency_ms: float
    duplicates: int = 0

    @property
    def prompts(self) -> int:
        return len(self.by_key)

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
        for rec in outcomes.records:
            o = rec.models.get(model)
            if o is None:
                continue
            key = prompt_key(rec.system_prompt, rec.user_prompt)
            if key in by_key:
                duplicates += 1
                continue
            reply = make_reply(
                o.answer,
                o.conf_logprob,
                tokens_in=(
                    o.tokens_in
                    if o.tokens_in is not None
                    else estimate_tokens(rec.system_prompt or "", rec.user_prompt)
                ),
                tokens_out=o.tokens_out,
                latency_ms=o.latency_ms if o.latency_ms is not None else default_latency,
                recorded=True,
            )
            reply.logprobs_json(0)  # the common case (logprobs without alternatives), ready to send
            by_key[key] = reply
            by_user.setdefault(prompt_key(None, rec.user_prompt), reply)
        return cls(model, outcomes.path, by_key, by_user, default_latency, duplicates)
