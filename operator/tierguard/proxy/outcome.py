"""What happened to one request: the tier calls made (:class:`Attempt`) and how it ended
(:class:`Outcome`). The escalation loop fills them in; delivery and the recorder read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cascade import Judgement
from ..policy import Tier
from .runtime import RevisionRuntime
from .upstream import TierFailure


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
    answer_kind: str | None = None  # text | tool_call, once the tier answered
    problem: str | None = None  # why an invalid tool call or structured output was refused
    verify_tokens_in: int = 0  # the self-verification call (confidence.method: self_eval)
    verify_tokens_out: int = 0
    answer: str | None = None  # a cheaper tier's text answer that was escalated (compared later)

    def used(self, tier: Tier, tokens_in: int, tokens_out: int, latency_s: float) -> None:
        """Record what the call took and cost."""
        self.latency_s = latency_s
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.cost_usd = tier.cost_usd(tokens_in, tokens_out)

    def verified(self, tier: Tier, tokens_in: int, tokens_out: int) -> None:
        """Add the self-verification call's tokens and cost: it is paid for like the answer."""
        self.verify_tokens_in, self.verify_tokens_out = tokens_in, tokens_out
        self.cost_usd += tier.cost_usd(tokens_in, tokens_out)

    @property
    def all_tokens_in(self) -> int:
        return self.tokens_in + self.verify_tokens_in

    @property
    def all_tokens_out(self) -> int:
        return self.tokens_out + self.verify_tokens_out

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
        if self.verify_tokens_in or self.verify_tokens_out:  # cost_usd includes them
            out["self_eval_tokens_in"] = self.verify_tokens_in
            out["self_eval_tokens_out"] = self.verify_tokens_out
        if self.streamed_tokens is not None:
            out["tokens_seen_before_abort"] = self.streamed_tokens
        if self.answer_kind is not None:
            out["answer_kind"] = self.answer_kind
        if self.problem is not None:
            out["problem"] = self.problem
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
    answer: str | None = None  # the text the client received in full, once it has
    start: int = 0  # the tier the turn started at (conversation affinity)
    conversation: str | None = None  # the client's conversation id, if it sent one

    @property
    def confidence(self) -> float | None:
        if self.answered is None or not self.attempts or self.attempts[-1].judgement is None:
            return None
        return self.attempts[-1].judgement.confidence

    @property
    def answer_kind(self) -> str | None:
        """``text`` or ``tool_call``: what the client received (None when nothing)."""
        if self.answered is None or not self.attempts:
            return None
        return self.attempts[-1].answer_kind

    @property
    def answered_tier(self) -> str | None:
        return None if self.answered is None else self.revision.clients[self.answered].tier.name
