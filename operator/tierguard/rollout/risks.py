"""Policies that pass every schema check and still do damage, found before they act (pure).

A risk does not stop the reconciler (each has legitimate uses in a test namespace); it is stated
on the policy as the condition ``Risky=True`` with the risk's reason and message, and posted as a
Warning Event when it appears or changes. Fix the policy and the condition turns ``False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..policy import CascadePolicySpec, QualitySLOSpec
from . import conditions as cond
from .status import PolicyStatus

RISKY = "Risky"


@dataclass(frozen=True)
class Risk:
    reason: str  # a condition/Event reason (CamelCase)
    message: str  # what happens and what to change


def _accepts_everything(spec: CascadePolicySpec, tier: int) -> bool:
    conf = spec.tiers[tier].confidence
    return conf.calibration_map()(0.0) >= conf.threshold


def policy_risks(spec: CascadePolicySpec, slos: Mapping[str, QualitySLOSpec]) -> list[Risk]:
    """The risks of a valid policy; ``slos`` are the QualitySLOs it references, resolved."""
    risks: list[Risk] = []
    cheaper = [t.name for t in spec.tiers[:-1]]
    for i, name in enumerate(cheaper):
        if _accepts_everything(spec, i):
            later = ", ".join(t.name for t in spec.tiers[i + 1 :])
            risks.append(
                Risk(
                    "CheapTierAcceptsEverything",
                    f"tier {name!r} accepts every answer (threshold {spec.tiers[i].confidence.threshold:g} "
                    f"at or below its lowest calibrated confidence): {later} never answer(s); raise its "
                    f"threshold or remove the tiers after it",
                )
            )
            break  # the tiers after it are unreachable: their own settings do not matter
    first = spec.rollout.steps[0].weight
    if first >= 100:
        risks.append(
            Risk(
                "FirstStepFullTraffic",
                "the rollout's first step sends 100% of traffic to the canary before any analysis: "
                "start with a small step (e.g. 5) so an SLO breach reaches few users",
            )
        )
    if spec.slos and cheaper:
        objectives = [o for ref in spec.slos if (slo := slos.get(ref.name)) for o in slo.objectives]
        if objectives and not any(o.tier is None or o.tier in cheaper for o in objectives):
            risks.append(
                Risk(
                    "CheaperTiersUnwatched",
                    f"no QualitySLO objective watches the cheaper tier(s) {', '.join(cheaper)}, whose "
                    "answers a cascade revision changes: add an objective with one of them as its tier, "
                    "or none (every tier)",
                )
            )
    return risks


def flag_risks(
    status: PolicyStatus, risks: Sequence[Risk], now: datetime, generation: int | None = None
) -> PolicyStatus:
    """``status`` with the ``Risky`` condition set from ``risks`` (``False`` when there are none
    and the condition was there before; absent on a policy that never had one)."""
    had = cond.get_condition(status.conditions, RISKY)
    if not risks and had is None:
        return status
    if risks:
        value = (True, risks[0].reason, "; ".join(r.message for r in risks))
    else:
        value = (False, "NoKnownRisk", "no known risky setting")
    gen = generation if generation is not None else status.observed_generation
    conds = cond.set_conditions(status.conditions, now, gen, **{RISKY: value})
    return status.model_copy(update={"conditions": conds})


def risk_event(before: PolicyStatus, after: PolicyStatus) -> tuple[str, str, str] | None:
    """The Event to post when the ``Risky`` condition appeared, changed or cleared."""
    old = cond.get_condition(before.conditions, RISKY)
    new = cond.get_condition(after.conditions, RISKY)
    if new is None or (old is not None and (old.status, old.message) == (new.status, new.message)):
        return None
    if new.status == "True":
        return ("Warning", "RiskyPolicy", new.message)
    return ("Normal", "RiskCleared", "the policy no longer has a known risky setting")
