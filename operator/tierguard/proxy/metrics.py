"""The proxy's Prometheus metrics (names in :mod:`tierguard.metric_names`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import metric_names as m


class ProxyMetrics:
    """All series of one proxy process, in a registry of its own."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        r = self.registry = CollectorRegistry(auto_describe=True)
        rt = ["policy", "revision", "tier"]
        self.tier_requests = Counter(m.TIER_REQUESTS, "Tier calls by outcome", [*rt, "outcome"], registry=r)
        self.requests = Counter(
            m.REQUESTS, "Requests by answering tier and status", [*rt, "status"], registry=r
        )
        self.escalations = Counter(m.ESCALATIONS, "Escalations by reason", [*rt, "reason"], registry=r)
        self.tokens = Counter(m.TOKENS, "Tokens by direction", [*rt, "direction"], registry=r)
        self.cost = Counter(m.COST_USD, "Cost in USD of tier calls", rt, registry=r)
        self.counterfactual = Counter(
            m.COUNTERFACTUAL_COST_USD,
            "Estimated cost had the capable tier answered every request",
            ["policy", "revision"],
            registry=r,
        )
        self.feedback = Counter(
            m.FEEDBACK, "User feedback joined to the routing decision", [*rt, "rating"], registry=r
        )
        self.feedback_rejected = Counter(
            m.FEEDBACK_REJECTED, "Feedback with a forged or malformed id", ["policy", "reason"], registry=r
        )
        self.bad_requests = Counter(
            m.BAD_REQUESTS, "Rejected client requests", ["policy", "reason"], registry=r
        )
        self.confidence = Histogram(
            m.CONFIDENCE, "Calibrated confidence per tier", rt, buckets=m.CONFIDENCE_BUCKETS, registry=r
        )
        self.confidence_psi = Gauge(
            m.CONFIDENCE_PSI,
            "PSI of the tier's last calibrated confidences against its reference distribution",
            rt,
            registry=r,
        )
        self.tier_latency = Histogram(
            m.TIER_LATENCY, "Latency of tier calls", rt, buckets=m.LATENCY_BUCKETS, registry=r
        )
        self.request_latency = Histogram(
            m.REQUEST_LATENCY,
            "End-to-end latency",
            ["policy", "revision"],
            buckets=m.LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(m.IN_FLIGHT, "Requests in flight", ["policy"], registry=r).labels(policy)
        self.config_info = Gauge(
            m.CONFIG_INFO,
            "The applied configuration",
            ["policy", "config_hash", "stable_revision", "canary_revision"],
            registry=r,
        )
        self.canary_weight = Gauge(m.CANARY_WEIGHT, "Canary traffic share in percent", ["policy"], registry=r)
        self.tool_calls = Counter(
            m.TOOL_CALLS, "Tool-call answers of a tier by outcome", [*rt, "outcome"], registry=r
        )
        self.affinity_starts = Counter(
            m.AFFINITY_STARTS,
            "Turns started above the cheapest tier by conversation affinity",
            rt,
            registry=r,
        )
        self.affinity_conversations = Gauge(
            m.AFFINITY_CONVERSATIONS, "Conversations in the affinity table", ["policy"], registry=r
        )
        self.reloads = Counter(m.CONFIG_RELOADS, "Config reloads by result", ["policy", "result"], registry=r)
        self.config_rejected = Gauge(
            m.CONFIG_REJECTED,
            "1 while the policy file on disk is rejected and the last good config keeps serving",
            ["policy"],
            registry=r,
        ).labels(policy)

        self.shadow_samples = Counter(
            m.SHADOW_SAMPLES, "Accepted answers re-answered by the last tier", rt, registry=r
        )
        self.shadow_disagreements = Counter(
            m.SHADOW_DISAGREEMENTS, "Shadow samples whose last-tier answer differs", rt, registry=r
        )
        self.shadow_cost = Counter(
            m.SHADOW_COST_USD, "Cost in USD of shadow calls", ["policy", "revision"], registry=r
        )
        self.shadow_skipped = Counter(
            m.SHADOW_SKIPPED, "Shadow samples not taken", ["policy", "reason"], registry=r
        )
        self.shadow_rate = Gauge(
            m.SHADOW_RATE, "The shadow rate applied per revision", ["policy", "revision"], registry=r
        )
        # Every request looks up ~10 labelled series; prometheus_client's labels() validates and
        # locks on each call. Remember the children (these series are never removed or cleared).
        for metric in (
            self.tier_requests,
            self.requests,
            self.escalations,
            self.tokens,
            self.cost,
            self.counterfactual,
            self.confidence,
            self.tier_latency,
            self.request_latency,
        ):
            metric.labels = lru_cache(maxsize=4096)(metric.labels)  # type: ignore[method-assign, assignment]

    def set_config(
        self,
        config_hash: str,
        stable: str,
        canary: str | None,
        weight: int,
        shadow_rates: Mapping[str, float] | None = None,
    ) -> None:
        """Export the applied config; ``shadow_rates``: the shadow rate of each served revision."""
        self.config_info.clear()
        self.config_info.labels(self.policy, config_hash, stable, canary or "").set(1)
        self.canary_weight.labels(self.policy).set(weight)
        self.shadow_rate.clear()
        for revision, rate in (shadow_rates or {}).items():
            self.shadow_rate.labels(self.policy, revision).set(rate)
