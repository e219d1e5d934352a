"""The cascade's decision: accept a tier's answer or escalate. Pure functions, no I/O.

The proxy calls :func:`judge` after each tier answers; ``tierguard replay`` calls
:func:`route` with recorded confidences. Both therefore make exactly the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .confidence import aggregate, best_case
from .policy import CascadeSpec
from .structured import structured_output_problem
from .toolcalls import ToolCall, ToolCallMethod, tool_call_problem, tool_call_raw

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


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """What the proxy found in an answer before its confidence: its kind, the tool-call method the
    tier uses, and a problem that rules the answer out (invalid call or structured output)."""

    kind: AnswerKind = "text"
    method: ToolCallMethod = "escalate"
    tool_call_problem: str | None = None
    structured_problem: str | None = None


def judge_answer(spec: CascadeSpec, tier: int, raw: float | None, check: AnswerCheck) -> Judgement:
    """:func:`judge` for an answer that may be a tool call or a structured output.

    A non-last tier's invalid tool call or structured output escalates with its own reason, as
    does a tool call under the ``escalate`` rule (``tool_call_rule``) or with no confidence
    (``no_confidence``); everything else is :func:`judge` on ``raw``.
    """
    j = judge(spec, tier, raw)
    if j.reason == "last_tier":
        return j
    if check.tool_call_problem is not None:
        return Judgement(tier, False, "invalid_tool_call", raw, j.confidence)
    if check.structured_problem is not None:
        return Judgement(tier, False, "invalid_structured_output", raw, j.confidence)
    if j.accepted:
        return j
    if check.kind == "tool_call" and check.method == "escalate":
        return Judgement(tier, False, "tool_call_rule", raw, j.confidence)
    if raw is None and check.kind == "tool_call":
        return Judgement(tier, False, "no_confidence", raw, j.confidence)
    return j


def check_answer(
    spec: CascadeSpec, tier: int, calls: Sequence[ToolCall], text: str, request: dict[str, Any]
) -> AnswerCheck:
    """Inspect one answer (its tool calls, else its text) against the request's ``tools`` and
    ``response_format``: the same check for live answers (proxy) and recorded ones (replay)."""
    method = spec.tiers[tier].confidence.tool_call_method
    if calls:
        return AnswerCheck(
            "tool_call", method, tool_call_problem=tool_call_problem(calls, request.get("tools"))
        )
    return AnswerCheck(
        "text", method, structured_problem=structured_output_problem(text, request.get("response_format"))
    )


def effective_raw(check: AnswerCheck, measured: float | None) -> float | None:
    """The raw confidence :func:`route` must see so that it decides as :func:`judge_answer` does:
    none for a ruled-out answer, the tool-call method's value for a call."""
    if check.kind == "tool_call":
        return tool_call_raw(check.method, measured, check.tool_call_problem)
    return None if check.structured_problem is not None else measured


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
