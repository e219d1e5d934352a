"""The canary's shadow rate during a rollout: a pure choice from what the last interval saw.

Shadow scoring re-asks the last tier for a sample of the cheaper tiers' accepted answers; the share
that differs is the ``shadow_disagreement`` signal. A fixed rate is wrong both ways: a canary at 5%
of little traffic collects too few shadow samples per analysis interval, a canary at 50% of heavy
traffic pays for far more than a verdict needs. With ``spec.proxy.shadowBudget`` the operator picks
the canary's rate each analysis interval (:func:`choose_shadow_rate`):

* needed = ``minSamples`` x :data:`SAMPLE_HEADROOM` / (accepted answers per interval of the cheaper
  tier that accepts the fewest), the rate at which every cheaper tier collects its samples;
* never below the base rate (``spec.proxy.shadowRate``), never above ``shadowBudget.maxRate``;
* never above the rate whose expected spend, with the stable revision's observed shadow spend,
  reaches ``shadowBudget.maxSpendPerHour`` (the cost per shadow call is observed: the canary's own
  shadow calls, else its last tier's cost per call);
* without traffic, without a known cost per call, or when the metrics provider fails: the base
  rate. Missing data never raises spend.

A rate that is still enough and at most :data:`KEEP_ABOVE_NEEDED` above what is needed is kept, so
the ConfigMap is not rewritten for every wobble of the traffic. When the analysis that observed
the traffic also advanced the step, the traffic is scaled to the new weight first.
:func:`next_shadow` turns the choice into the status' ``shadow`` field, and back to the base rate
once the rollout ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from ..policy import CascadePolicySpec, ShadowBudget, parse_duration
from .observations import ShadowObservation
from .status import PolicyStatus, ShadowReason, ShadowStatus

SAMPLE_HEADROOM = 1.2
"""Aim for this many times ``minSamples``: traffic within an interval varies."""
KEEP_ABOVE_NEEDED = 1.25
"""Keep the current rate while it is enough and at most this factor above what is needed."""


@dataclass(frozen=True)
class ShadowRate:
    rate: float
    reason: ShadowReason
    expected_spend_per_hour: float | None
    message: str


def _round_sig(x: float, *, up: bool, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits, rounded up or down (so a cap stays a cap)."""
    if x <= 0.0:
        return 0.0
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return (math.ceil(x * scale - 1e-9) if up else math.floor(x * scale + 1e-9)) / scale


def choose_shadow_rate(
    base_rate: float,
    budget: ShadowBudget,
    min_samples: int,
    interval_seconds: float,
    observed: ShadowObservation,
    previous: float | None = None,
) -> ShadowRate:
    """The canary's shadow rate for the next interval (see the module docstring).

    ``previous``: the rate the canary has now (None: the base rate). The result is never below
    ``base_rate``; without traffic, cost or a working provider it is ``base_rate``.
    """
    if observed.error is not None:
        return ShadowRate(
            base_rate, "ProviderError", None, f"metrics unavailable ({observed.error}): base rate"
        )
    traffic = {t: r for t, r in observed.accepted_per_second.items() if r is not None and r > 0.0}
    if not traffic:
        return ShadowRate(
            base_rate,
            "NoTrafficObserved",
            None,
            "no accepted cheaper-tier answers of the canary in the last interval: base rate",
        )
    total = sum(traffic.values())
    cost = observed.cost_per_call

    def spend(rate: float) -> float | None:
        return None if cost is None else observed.other_spend_per_hour + rate * total * 3600.0 * cost

    slowest = min(traffic, key=lambda t: traffic[t])
    per_interval = traffic[slowest] * interval_seconds
    needed = SAMPLE_HEADROOM * min_samples / per_interval

    def samples(rate: float) -> str:
        return f"{rate * per_interval:.1f} shadow samples per interval on tier {slowest} (of {min_samples})"

    if needed <= base_rate:
        return ShadowRate(base_rate, "Base", spend(base_rate), f"the base rate collects {samples(base_rate)}")
    if cost is None:
        return ShadowRate(
            base_rate,
            "NoCostObserved",
            None,
            "no cost per shadow call observed yet (no shadow or last-tier call of the canary): base rate",
        )
    ceiling = budget.max_rate
    capped_by: ShadowReason = "CappedByMaxRate"
    if cost > 0.0:
        allowance = budget.max_spend_per_hour - observed.other_spend_per_hour
        by_budget = _round_sig(max(0.0, allowance) / (total * 3600.0 * cost), up=False)
        if by_budget < ceiling:
            ceiling, capped_by = by_budget, "CappedByBudget"
    if needed <= ceiling:
        rate = min(_round_sig(needed, up=True), ceiling)
        if previous is not None and rate <= previous <= min(ceiling, rate * KEEP_ABOVE_NEEDED):
            rate = previous
        return ShadowRate(rate, "RaisedForSamples", spend(rate), f"raised to collect {samples(rate)}")
    rate = max(base_rate, ceiling)
    limit = (
        f"the budget of {budget.max_spend_per_hour:g} USD/h"
        if capped_by == "CappedByBudget"
        else f"maxRate {budget.max_rate:g}"
    )
    floor = f" (the base rate {base_rate:g} is the floor)" if rate > ceiling else ""
    return ShadowRate(
        rate,
        capped_by,
        spend(rate),
        f"collecting {min_samples} shadow samples per interval on tier {slowest} needs rate {needed:.3g}; "
        f"{limit} allows {ceiling:g}{floor}: {samples(rate)}",
    )


def next_shadow(
    status: PolicyStatus,
    spec: CascadePolicySpec,
    observed: ShadowObservation | None,
    now: datetime,
) -> PolicyStatus:
    """The status with its ``shadow`` field for the next interval.

    Without ``spec.proxy.shadowBudget`` there is none (every revision runs ``shadowRate``). While a
    canary rolls out, an analysis (``observed`` set) chooses its rate; between analyses the rate
    stays. Outside a rollout (promoted, rolled back, aborted) the rate is the base rate.

    ``observed`` is the interval before this analysis; when the same analysis advanced the step,
    its traffic is scaled to the new weight (:meth:`ShadowObservation.at_weight`)."""
    budget = spec.proxy.shadow_budget
    if budget is None:
        return status if status.shadow is None else status.model_copy(update={"shadow": None})
    base = spec.proxy.shadow_rate
    current = status.shadow
    canary = status.canary.name if status.rolling and status.canary is not None else None
    same = current is not None and current.revision == canary and canary is not None
    if canary is None:
        choice = ShadowRate(base, "Base", None, "no rollout in progress: every revision at the base rate")
    elif observed is None:
        if same:
            return status
        choice = ShadowRate(base, "Base", None, "waiting for the canary's first analysis interval")
    else:
        min_samples = budget.min_samples or spec.rollout.min_samples
        previous = current.rate if same and current is not None else None
        expected = observed.at_weight(status.canary_weight)
        choice = choose_shadow_rate(
            base, budget, min_samples, parse_duration(spec.rollout.interval), expected, previous
        )
    shadow = ShadowStatus(
        revision=canary,
        rate=choice.rate,
        base_rate=base,
        reason=choice.reason,
        expected_spend_per_hour=(
            None if choice.expected_spend_per_hour is None else round(choice.expected_spend_per_hour, 6)
        ),
        max_spend_per_hour=budget.max_spend_per_hour,
        message=choice.message,
        time=now,
    )
    if current is not None and current.model_copy(update={"time": now}) == shadow:
        return status  # unchanged: keep the time it was chosen
    return status.model_copy(update={"shadow": shadow})
