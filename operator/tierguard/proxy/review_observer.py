"""Review sampling as one more observer of each request's :class:`Decision` (docs/review.md),
and the free comparisons of escalated requests for ``tierguard tune``."""

from __future__ import annotations

import random

from ..review.observer import Answered
from ..review.plugin import ReviewPlugin
from .comparisons import compare_attempts
from .observers import counterfactual_cost
from .recorder import Decision


class ReviewObserver:
    """Offers every answer the client received in full to the review sampler; of a request the
    capable tier answered after cheaper tiers escalated, records (at the escalation rate) each
    cheaper text answer next to the capable one."""

    def __init__(self, review: ReviewPlugin, rng: random.Random | None = None) -> None:
        self.review = review
        self.rng = rng or random.Random()

    def observe(self, decision: Decision) -> None:
        if self.review.sampling is None:
            return
        if decision.status != "ok" or decision.answer is None or not decision.response_id:
            return
        last = decision.attempts[-1].judgement if decision.attempts else None
        self.review.observe(
            Answered(
                response_id=decision.response_id,
                policy=decision.policy,
                revision=decision.revision.name,
                tier=decision.answered_tier,
                confidence=last.confidence if last is not None else None,
                messages=decision.request.get("messages"),
                answer=decision.answer,
                cost_usd=decision.cost_usd,
                counterfactual_usd=counterfactual_cost(decision),
                config_hash=decision.runtime.config_hash,
            )
        )
        self.escalated(decision)

    def escalated(self, decision: Decision) -> None:
        rev = decision.revision
        if rev.capable_only or decision.answered != len(rev.clients) - 1 or decision.answer is None:
            return
        spec = self.review.spec
        rate = spec.escalation_rate if spec is not None else None
        if rate is None:
            rate = decision.runtime.config.settings.shadow_rate
        if rate <= 0.0 or self.rng.random() >= rate:
            return
        results = compare_attempts(
            response_id=decision.response_id,
            policy=decision.policy,
            revision=rev.name,
            spec=rev.revision.cascade,
            attempts=decision.attempts,
            answered=decision.answered_tier,
            served=decision.answer,
            capable=decision.answer,
            probability=rate,
            source="escalation",
        )
        if results:
            self.review.observe_comparisons(results)
