"""The cascade's decision: accept a tier's answer or escalate. Pure functions, no I/O.

The proxy calls :func:`judge` after each tier answers; ``tierguard replay`` calls
:func:`route` with recorded confidences. Both therefore make exactly the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .confidence import aggregate, best_case
from .policy import CascadeSpec

Reason = Literal[
    "accepted",
    "low_confidence",
    "no_confidence",
    "tier_error",
    "early_abort",
    "last_tier",
    "capable_only",
    "invalid_tool_call",
    "tool_call_rule",
    "invalid_structured_output",
]
AnswerKind = Literal["text", "tool_call"]


@dataclass(frozen=True, slots=True)
class Judgement:
    tier: int
    accepted: bool
    reason: Reason
    raw_confidence: float | None
    confidence: float | None


def raw_confidence(spec: CascadeSpec, logprobs: Sequence[float]) -> float:
    c = spec.confidence
    return aggregate(logprobs, c.aggregate, c.quantile)


def judge(spec: CascadeSpec, tier: int, raw: float | None, *, error: bool = False) -> Judgement:
    """Decide on tier ``tier``'s answer given its raw confidence (``None`` when it has none).

    - The last tier always answers (reason ``last_tier``), even when it failed: its failure is
      the client's error.
    - A failed non-last tier escalates (``tier_error``).
    - Otherwise accept at or above the tier's calibrated threshold.
    """
    last = tier == len(spec.tiers) - 1
    conf_spec = spec.tiers[tier].confidence
    calibrated = conf_spec.calibration_map()(raw) if raw is not None else None
    if last:
        return Judgement(tier, True, "last_tier", raw, calibrated)
    if error:
        return Judgement(tier, False, "tier_error", raw, calibrated)
    if calibrated is not None and calibrated >= conf_spec.threshold:
        return Judgement(tier, True, "accepted", raw, calibrated)
    return Judgement(tier, False, "low_confidence", raw, calibrated)


def acceptance_impossible(
    spec: CascadeSpec, tier: int, seen_logprobs: Sequence[float], max_tokens: int | None
) -> bool:
    """True when no continuation of a streaming answer can reach the tier's threshold."""
    if tier == len(spec.tiers) - 1 or not spec.confidence.early_abort or spec.confidence.method != "logprob":
        return False
    c = spec.confidence
    bound = best_case(seen_logprobs, max_tokens or c.assumed_max_tokens, c.aggregate, c.quantile)
    conf_spec = spec.tiers[tier].confidence
    return conf_spec.calibration_map()(bound) < conf_spec.threshold


@dataclass(frozen=True, slots=True)
class Route:
    answered_by: int
    judgements: tuple[Judgement, ...]

    @property
    def escalated(self) -> bool:
        return self.answered_by > 0


def route(spec: CascadeSpec, raw_confidences: Sequence[float | None], errors: Sequence[bool] = ()) -> Route:
    """Run the cascade over known per-tier raw confidences (recorded data).

    ``raw_confidences[i]`` is tier i's raw confidence; ``errors[i]`` marks a failed call.
    """
    if len(raw_confidences) != len(spec.tiers):
        raise ValueError(f"need {len(spec.tiers)} confidences, got {len(raw_confidences)}")
    made: list[Judgement] = []
    for i, raw in enumerate(raw_confidences):
        j = judge(spec, i, raw, error=bool(errors[i]) if i < len(errors) else False)
        made.append(j)
        if j.accepted:
            return Route(i, tuple(made))
    raise AssertionError("the last tier always answers")  # pragma: no cover


def capable_only(spec: CascadeSpec) -> Route:
    last = len(spec.tiers) - 1
    return Route(last, (Judgement(last, True, "capable_only", None, None),))
