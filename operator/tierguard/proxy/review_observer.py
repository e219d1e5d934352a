"""Review sampling as one more observer of each request's :class:`Decision` (docs/review.md)."""

from __future__ import annotations

from ..review.observer import Answered
from ..review.plugin import ReviewPlugin
from .observers import counterfactual_cost
from .recorder import Decision


class ReviewObserver:
    """Offers every answer the client received in full to the review sampler."""

    def __init__(self, review: ReviewPlugin) -> None:
        self.review = review

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
