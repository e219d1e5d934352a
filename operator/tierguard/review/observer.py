"""Review sampling as an observer of the proxy's decisions.

For each answered request: the novelty of its prompt, a draw from the stratified sampler, and for a
sampled answer a (redacted) item offered to the writer's bounded queue. Everything here is
in-memory and constant-time apart from the novelty score (one pass over the prompt's tokens);
nothing waits for the store.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..policy import ReviewSpec
from .metrics import ReviewMetrics
from .novelty import NoveltyReference
from .redact import redact
from .sampling import Sampler
from .store import Item, StratumRow
from .writer import ReviewWriter

log = logging.getLogger("tierguard.review")
COUNTS_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Answered:
    """What the observer needs from one answered request."""

    response_id: str
    policy: str
    revision: str
    tier: str
    confidence: float | None
    messages: Any  # the request's messages
    answer: str
    cost_usd: float
    counterfactual_usd: float
    config_hash: str


def prompt_text(messages: Any) -> str:
    """The last user message's text (text parts of an array content joined)."""
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        return ""
    return ""


class ReviewSampling:
    def __init__(
        self,
        spec: ReviewSpec,
        metrics: ReviewMetrics,
        writer: ReviewWriter,
        novelty: NoveltyReference | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.writer = writer
        self.novelty = novelty
        self.sampler = Sampler(spec, rng)
        self.clock = clock
        self._next_counts = 0.0
        self._policy = ""

    def observe(self, a: Answered) -> bool:
        """Sample (or not) one answered request; True when an item was queued."""
        now = self.clock()
        self._policy = a.policy
        text = prompt_text(a.messages)
        ref = self.novelty
        draw = self.sampler.draw(
            a.revision, a.tier, a.confidence, (lambda: ref.novelty(text)) if ref is not None else 0.0, now
        )
        s = draw.stratum
        if draw.reason == "quota":
            self.metrics.capped.labels(a.policy, s.revision, s.tier, s.band).inc()
        queued = False
        if draw.sampled:
            self.metrics.sampled.labels(a.policy, s.revision, s.tier, s.band).inc()
            prompt, answer = (redact(text), redact(a.answer)) if self.spec.redact else (text, a.answer)
            queued = self.writer.offer(
                Item(
                    id=a.response_id,
                    ts=now,
                    policy=a.policy,
                    revision=a.revision,
                    tier=a.tier,
                    band=s.band,
                    confidence=a.confidence,
                    novelty=None if draw.novelty is None else round(draw.novelty, 4),
                    probability=draw.probability,
                    prompt=prompt,
                    answer=answer,
                    cost_usd=a.cost_usd,
                    counterfactual_usd=a.counterfactual_usd,
                    config_hash=a.config_hash,
                )
            )
        if now >= self._next_counts:
            self.flush_counts()
            self._next_counts = now + COUNTS_EVERY_S
        return queued

    def flush_counts(self) -> None:
        """Hand the strata's counts since the last flush to the writer."""
        rows = [
            StratumRow(
                c.hour,
                self._policy,
                c.stratum.revision,
                c.stratum.tier,
                c.stratum.band,
                c.seen,
                c.sampled,
                c.confidence_sum,
                c.confidence_n,
            )
            for c in self.sampler.drain_counts()
        ]
        if rows:
            self.writer.offer(rows)

    def close(self) -> None:
        self.flush_counts()
        self.writer.close()
