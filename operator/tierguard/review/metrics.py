"""Prometheus series of review sampling and outcome events, registered on the proxy's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from .. import metric_names as m


class ReviewMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        rt = ["policy", "revision", "tier"]
        self.sampled = Counter(
            m.REVIEW_SAMPLED, "Answers sampled for review", [*rt, "band"], registry=registry
        )
        self.capped = Counter(
            m.REVIEW_CAPPED,
            "Answers drawn for review but over the stratum's hard cap",
            [*rt, "band"],
            registry=registry,
        )
        self.dropped = Counter(
            m.REVIEW_DROPPED, "Sampled items not stored", ["policy", "reason"], registry=registry
        )
        self.outcomes = Counter(
            m.OUTCOME_EVENTS,
            "Outcome events joined to the routing decision",
            [*rt, "event"],
            registry=registry,
        )
        self.outcome_value = Counter(
            m.OUTCOME_VALUE, "Sum of the outcome events' values", [*rt, "event"], registry=registry
        )
        self.outcome_rejected = Counter(
            m.OUTCOME_REJECTED, "Rejected outcome events", ["policy", "reason"], registry=registry
        )
