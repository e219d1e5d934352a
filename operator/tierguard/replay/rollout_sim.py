"""``replay --scenario rollout``: a fitted policy rolled out on replayed traffic through the
operator's own rollout code, with no cluster and no Prometheus.

Each analysis interval, ``requests_per_interval`` recorded queries arrive; the canary gets its
step's weight of them and routes them with the proxy's decision code
(:func:`tierguard.cascade.route`). Shadow scoring re-asks the capable tier for a random
``shadow_rate`` of the accepted cheaper answers and counts a disagreement when the recorded answers
differ, as the proxy does. The counts become the values of the exact PromQL queries
:func:`tierguard.rollout.analysis.observe` asks a :class:`~tierguard.metrics.fake.FakeProvider`;
:func:`tierguard.rollout.decide.decide` and :func:`~tierguard.rollout.decide.next_status` run
unchanged, against the real :class:`~tierguard.policy.QualitySLOSpec` objects.

The default QualitySLO bounds each cheaper tier's ``shadow_disagreement`` (docs/guarantee.md): a
healthy rate (the tier's disagreement on the train rows it accepted, plus the accuracy slack
``eps / share`` the guarantee allows it) and, on top, the noise of one interval: the bound is the
99th percentile of a healthy tier's disagreement share over the shadow samples one interval at
the middle step is expected to see (earlier steps see fewer and are noisier; the failure
threshold absorbs a single noisy breach).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..cascade import route
from ..gaptest import binom_sf
from ..metrics.fake import FakeProvider
from ..outcomes import Row
from ..policy import CascadePolicySpec, Objective, QualitySLOSpec, Revision, SLORef
from ..rollout.analysis import observe
from ..rollout.decide import Promote, Rollback, decide, interval_of, next_status, start_rollout
from ..rollout.slo import QueryContext, config_current_query, objective_query, objective_tiers, samples_query
from ..rollout.status import PolicyStatus

SLO_NAME = "replay-quality"
HEALTHY_QUANTILE = 0.01  # a healthy interval breaches with at most this probability at the first step
NAMESPACE = "replay"
CONFIG_HASH = "replayed"


@dataclass
class RolloutOutcome:
    result: str  # "promoted", "rolled back" or "undecided"
    intervals: int
    canary_requests: int  # requests the canary served before the decision
    requests: int  # all requests before the decision
    final_weight: int
    message: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def disagreement_slo(
    spec: CascadePolicySpec, train: Sequence[Row], eps: float, requests_per_interval: int, shadow_rate: float
) -> QualitySLOSpec:
    """The default QualitySLO of the scenario: one ``shadow_disagreement`` bound per cheaper tier."""
    weights = [st.weight for st in spec.rollout.steps]
    ref = weights[len(weights) // 2] / 100.0  # the middle step's traffic sets the noise allowance
    objectives = []
    n = max(1, len(train))
    for t, tier in enumerate(spec.tiers[:-1]):
        accepted = [r for r in train if route(spec, r.raw).answered_by == t]
        share = len(accepted) / n
        if not accepted:
            continue
        rate = sum(r.answer[t] != r.answer[-1] for r in accepted) / len(accepted)
        healthy = min(1.0, rate + eps / share)
        m = max(1, round(requests_per_interval * ref * share * shadow_rate))
        k = next(k for k in range(m + 2) if k > m or binom_sf(k, m, healthy) <= HEALTHY_QUANTILE)
        bound = min(1.0, k / m)
        objectives.append(
            Objective(
                name=f"disagreement-{tier.name}", tier=tier.name, signal="shadow_disagreement", max=bound
            )
        )
    if not objectives:  # no cheaper tier answers: check the entry tier's escalation instead
        objectives.append(Objective(name="escalation", signal="escalation_rate", max=1.0))
    return QualitySLOSpec(objectives=objectives)


def _interval_answers(
    spec: CascadePolicySpec,
    rows: Sequence[Row],
    slo: QualitySLOSpec,
    canary: str,
    interval: str,
    shadow_rate: float,
    rng: random.Random,
) -> dict[str, float | None]:
    """The value of every query the analysis will ask, from the canary's replayed requests."""
    tiers = [t.name for t in spec.tiers]
    reached = [0] * len(tiers)
    escalated = [0] * len(tiers)
    shadow = [0] * len(tiers)
    disagree = [0] * len(tiers)
    for r in rows:
        k = route(spec, r.raw).answered_by
        for i in range(k + 1):
            reached[i] += 1
        for i in range(k):
            escalated[i] += 1
        if k < len(tiers) - 1 and rng.random() < shadow_rate:
            shadow[k] += 1
            disagree[k] += r.answer[k] != r.answer[-1]
    base = QueryContext(policy=SLO_NAME, namespace=NAMESPACE, revision=canary, interval=interval)
    answers: dict[str, float | None] = {config_current_query(SLO_NAME, NAMESPACE, CONFIG_HASH): 1.0}
    for i, name in enumerate(tiers):
        answers[samples_query(base.for_tier(name))] = float(reached[i])
    for obj in slo.objectives:
        for tier in objective_tiers(obj, tiers):
            i = tiers.index(tier) if tier is not None else 0
            if obj.signal == "shadow_disagreement":
                value = disagree[i] / shadow[i] if shadow[i] else None
            elif obj.signal == "escalation_rate":
                value = escalated[i] / reached[i] if reached[i] else None
            else:
                raise ValueError(
                    f"the rollout scenario computes shadow_disagreement and escalation_rate, not {obj.signal}"
                )
            answers[objective_query(obj, base.for_tier(tier))] = value
    return answers


def simulate(
    spec: CascadePolicySpec,
    traffic: Sequence[Row],
    slo: QualitySLOSpec,
    *,
    requests_per_interval: int,
    shadow_rate: float,
    seed: int,
    max_intervals: int = 200,
) -> RolloutOutcome:
    """Roll ``spec`` out against the capable-only baseline on ``traffic`` (cycled, reshuffled)."""
    rng = random.Random(seed)
    order = list(traffic)
    rng.shuffle(order)
    pos = 0
    spec = spec.model_copy(update={"slos": [SLORef(name=SLO_NAME)]})
    slos = {SLO_NAME: slo}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    revision = Revision.of(spec.cascade())
    status = start_rollout(PolicyStatus(), revision, now, spec.rollout)
    status = status.model_copy(update={"config_hash": CONFIG_HASH})
    step = interval_of(spec.rollout)
    canary_total = total = 0
    steps: list[dict[str, Any]] = []
    for k in range(1, max_intervals + 1):
        weight = status.canary_weight
        batch = []
        for _ in range(requests_per_interval):
            if pos == len(order):
                rng.shuffle(order)
                pos = 0
            if rng.random() * 100 < weight:
                batch.append(order[pos])
            pos += 1
        total += requests_per_interval
        canary_total += len(batch)
        now += step
        answers = _interval_answers(spec, batch, slo, revision.name, spec.rollout.interval, shadow_rate, rng)
        obs = observe(SLO_NAME, NAMESPACE, spec, status, slos, FakeProvider(answers), config_hash=CONFIG_HASH)
        decision = decide(spec.rollout, status, obs, now)
        steps.append(
            {
                "interval": k,
                "weight": weight,
                "decision": type(decision).__name__,
                "message": getattr(decision, "message", ""),
            }
        )
        status = next_status(status, decision, now).model_copy(update={"config_hash": CONFIG_HASH})
        if isinstance(decision, Promote | Rollback):
            result = "promoted" if isinstance(decision, Promote) else "rolled back"
            return RolloutOutcome(result, k, canary_total, total, weight, decision.message, steps)
    return RolloutOutcome(
        "undecided", max_intervals, canary_total, total, status.canary_weight, status.message or "", steps
    )


def test_gap(spec: CascadePolicySpec, rows: Sequence[Row]) -> float:
    """Capable-tier accuracy minus the policy's accuracy on ``rows``."""
    return sum(int(r.correct[-1]) - int(r.correct[route(spec, r.raw).answered_by]) for r in rows) / len(rows)


def _summary(outcomes: Sequence[RolloutOutcome]) -> dict[str, Any]:
    decided = [o for o in outcomes if o.result != "undecided"]
    reqs = sorted(o.requests for o in decided)
    return {
        "runs": len(outcomes),
        "promoted": sum(o.result == "promoted" for o in outcomes),
        "rolled_back": sum(o.result == "rolled back" for o in outcomes),
        "undecided": sum(o.result == "undecided" for o in outcomes),
        "median_requests_to_decision": reqs[len(reqs) // 2] if reqs else None,
        "median_canary_requests_to_decision": sorted(o.canary_requests for o in decided)[len(decided) // 2]
        if decided
        else None,
        "rolled_back_at_weights": sorted({o.final_weight for o in outcomes if o.result == "rolled back"}),
        "example": outcomes[0].message if outcomes else "",
        "example_steps": outcomes[0].steps if outcomes else [],
    }


def rollout_runs(
    label: str,
    spec: CascadePolicySpec,
    train: Sequence[Row],
    test: Sequence[Row],
    *,
    eps: float,
    requests_per_interval: int,
    shadow_rate: float,
    runs: int,
    seed: int,
) -> dict[str, Any]:
    """``runs`` rollouts of ``spec`` on ``test`` traffic, with the SLO derived from ``train``."""
    slo = disagreement_slo(spec, train, eps, requests_per_interval, shadow_rate)
    outs = [
        simulate(
            spec,
            test,
            slo,
            requests_per_interval=requests_per_interval,
            shadow_rate=shadow_rate,
            seed=seed + i,
        )
        for i in range(runs)
    ]
    return {
        "policy": label,
        "test_gap": test_gap(spec, test),
        "slo": [o.to_yaml_dict() for o in slo.objectives],
        **_summary(outs),
    }
