"""The proxy's standard observers of each request's :class:`~tierguard.proxy.recorder.Decision`.

- :class:`MetricsObserver`: the per-tier and per-request Prometheus series, with the
  counterfactual cost (what the capable tier alone would have cost);
- :class:`DriftObserver`: calibrated confidences into the PSI windows (``tierguard_confidence_psi``);
- :class:`DecisionLogObserver`: one JSON line per request;
- :class:`ShadowObserver`: a sample of accepted cheaper answers re-answered by the last tier;
- :class:`AffinityObserver`: remembers the tier a conversation's turn ended at (``affinity: sticky``).
"""

from __future__ import annotations

import time
from typing import Any

from .conversations import ConversationAffinity
from .decision_log import DecisionLog
from .drift_monitor import DriftMonitor
from .metrics import ProxyMetrics
from .outcome import Attempt
from .recorder import Decision
from .shadow import ShadowScorer


def tier_result(attempt: Attempt, decision: Decision) -> str:
    """The ``outcome`` label of one tier call: accepted, escalated, error or client_error."""
    j = attempt.judgement
    if attempt.error_kind == "client_error":
        return "client_error"  # the request's fault: not a tier error
    if attempt.error is not None and (j is None or not j.accepted or decision.failure is not None):
        return "error"
    if j is not None and j.accepted:
        return "accepted"
    return "escalated"


class MetricsObserver:
    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def observe(self, decision: Decision) -> None:
        m = self.metrics
        policy, rev = decision.policy, decision.revision.name
        for a in decision.attempts:
            j = a.judgement
            result = tier_result(a, decision)
            m.tier_requests.labels(policy, rev, a.tier, result).inc()
            if j is not None and not j.accepted and result != "client_error":
                m.escalations.labels(policy, rev, a.tier, j.reason).inc()
            if j is not None and j.confidence is not None:
                m.confidence.labels(policy, rev, a.tier).observe(j.confidence)
            if a.latency_s:
                m.tier_latency.labels(policy, rev, a.tier).observe(a.latency_s)
            if a.all_tokens_in:  # the answer and, with self_eval, the verification call
                m.tokens.labels(policy, rev, a.tier, "in").inc(a.all_tokens_in)
            if a.all_tokens_out:
                m.tokens.labels(policy, rev, a.tier, "out").inc(a.all_tokens_out)
            if a.cost_usd:
                m.cost.labels(policy, rev, a.tier).inc(a.cost_usd)
            if a.answer_kind == "tool_call" and result in ("accepted", "escalated"):
                m.tool_calls.labels(policy, rev, a.tier, result).inc()
        if decision.start and decision.attempts:
            m.affinity_starts.labels(policy, rev, decision.attempts[0].tier).inc()
        if decision.attempts:
            m.requests.labels(policy, rev, decision.answered_tier, decision.status).inc()
            m.request_latency.labels(policy, rev).observe(decision.latency_s)
            m.counterfactual.labels(policy, rev).inc(counterfactual_cost(decision))


def counterfactual_cost(decision: Decision) -> float:
    """What the request would have cost had the capable (last) tier answered it alone: the
    prompt's input tokens and the last call's output tokens at the capable tier's prices.

    The prompt's tokens are the capable tier's own count when it was called, else the first call
    that reported any: a stream aborted early ends before its usage arrives (0 tokens in). The
    capable tier alone would not verify its answer, so self-verification tokens are not part of
    it (they are part of the cascade's cost, :attr:`Attempt.cost_usd`)."""
    capable = decision.revision.clients[-1].tier
    attempts = decision.attempts
    called_capable = len(attempts) > 0 and attempts[-1].tier == capable.name and attempts[-1].tokens_in > 0
    prompt = (
        attempts[-1].tokens_in if called_capable else next((a.tokens_in for a in attempts if a.tokens_in), 0)
    )
    return capable.cost_usd(prompt, attempts[-1].tokens_out)


class DriftObserver:
    def __init__(self, drift: DriftMonitor) -> None:
        self.drift = drift

    def observe(self, decision: Decision) -> None:
        revision = decision.revision.revision
        for a in decision.attempts:
            j = a.judgement
            if j is not None and j.confidence is not None:
                self.drift.observe(decision.policy, revision, j.tier, j.confidence)


class DecisionLogObserver:
    """Writes to ``log``; the proxy swaps ``log`` when a reload moves the decision log."""

    def __init__(self, log: DecisionLog) -> None:
        self.log = log

    def observe(self, decision: Decision) -> None:
        self.log.write(log_entry(decision))


def log_entry(decision: Decision) -> dict[str, Any]:
    """The decision-log line of a request; the prompt only with ``settings.logPrompts``."""
    entry: dict[str, Any] = {
        "event": "request",
        "ts": time.time(),
        "id": decision.response_id or None,
        "policy": decision.policy,
        "revision": decision.revision.name,
        "config_hash": decision.runtime.config_hash,
        "stream": bool(decision.request.get("stream")),
        "answered_by": decision.answered_tier,
        "reason": decision.reason,
        "status": decision.status,
        "answer_kind": decision.answer_kind,
        "start_tier": decision.revision.clients[decision.start].tier.name,
        "latency_ms": round(decision.latency_s * 1000, 2),
        "cost_usd": decision.cost_usd,
        "tiers": [a.as_log() for a in decision.attempts],
    }
    if decision.runtime.config.settings.log_prompts:  # off unless explicitly enabled
        entry["messages"] = decision.request.get("messages")
    return entry


class ShadowObserver:
    """Offers each answer the client received in full to the shadow scorer (which samples)."""

    def __init__(self, scorer: ShadowScorer) -> None:
        self.scorer = scorer

    def observe(self, decision: Decision) -> None:
        if decision.answer is None or decision.answered is None or decision.failure is not None:
            return
        settings = decision.runtime.config.settings
        self.scorer.maybe_sample(
            decision.revision,
            decision.answered,
            settings.shadow_rate,
            settings.shadow_max_in_flight,
            decision.request,
            decision.answer,
            decision.response_id,
            decision.attempts,
        )


class AffinityObserver:
    """Remembers, per conversation, the highest tier that answered it (sticky revisions only)."""

    def __init__(self, affinity: ConversationAffinity) -> None:
        self.affinity = affinity

    def observe(self, decision: Decision) -> None:
        if decision.failure is None:
            self.affinity.record(decision.revision, decision.conversation, decision.answered)
