"""Judging one tier's answer: from what the tier sent to a :class:`~tierguard.cascade.Judgement`.

Pure functions, no I/O. The proxy judges live answers with them (streamed or not, the same
calls); ``tierguard replay`` and ``calibrate`` turn recorded log-probabilities into raw
confidences with :func:`recorded_raw_confidence`, so both see the same numbers.

Two ways to a raw confidence (``spec.confidence.method``):

- ``logprob``: aggregate the answer's token log-probabilities (:func:`logprob_confidence`).
- ``self_eval``: ask the tier whether its answer is correct (:func:`self_eval_request` builds the
  one-token question, :func:`p_yes` reads P("Y") from the reply). The last tier is never asked:
  it answers whatever its confidence.

:func:`judge_answer` then applies the tier's calibration map and threshold
(:func:`tierguard.cascade.judge`) and labels the last tier's answer (``last_tier`` or, on a
capable-only revision, ``capable_only``).

Agent answers (issue 11): :func:`check_answer` inspects an answer before its confidence: a tool
call (checked against the request's ``tools``; judged by the tier's ``toolCalls`` method) or a
text that must honour ``response_format``. :func:`effective_raw` maps what was measured to the raw
confidence the cascade sees, so ``replay`` (which only has :func:`tierguard.cascade.route`) decides
as the proxy does; :func:`judge_answer` with the check gives the escalation its own reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cascade import AnswerKind, Judgement, Reason, judge, raw_confidence
from .policy import CascadeSpec
from .structured import structured_output_problem
from .toolcalls import ToolCall, ToolCallMethod, tool_call_problem, tool_call_raw


def is_last(spec: CascadeSpec, tier: int) -> bool:
    return tier == len(spec.tiers) - 1


def asks_self_eval(spec: CascadeSpec, tier: int) -> bool:
    """True when tier ``tier``'s answer is judged by asking the tier itself."""
    return spec.confidence.method == "self_eval" and not is_last(spec, tier)


def wants_logprobs(spec: CascadeSpec) -> bool:
    """True when the judgement needs the tiers' token log-probabilities."""
    return spec.confidence.method == "logprob"


def logprob_confidence(spec: CascadeSpec, logprobs: Sequence[float]) -> float | None:
    """Raw confidence from an answer's token log-probabilities; None when it carries none."""
    return raw_confidence(spec, logprobs) if logprobs else None


def recorded_raw_confidence(spec: CascadeSpec, conf_logprob: float | None) -> float | None:
    """Raw confidence of a recorded answer (one answer token: ``exp(conf_logprob)``, aggregated
    as the proxy aggregates a live answer); None when none was recorded."""
    return None if conf_logprob is None else raw_confidence(spec, [conf_logprob])


def last_tier_answer(j: Judgement, capable_only: bool) -> Judgement:
    """The last tier's judgement (always accepted), labelled ``capable_only`` on such a revision."""
    reason: Reason = "capable_only" if capable_only else "last_tier"
    return Judgement(j.tier, True, reason, j.raw_confidence, j.confidence)


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """What was found in an answer before its confidence: its kind, the tool-call method the
    tier uses, and a problem that rules the answer out (invalid call or structured output)."""

    kind: AnswerKind = "text"
    method: ToolCallMethod = "escalate"
    tool_call_problem: str | None = None
    structured_problem: str | None = None

    @property
    def problem(self) -> str | None:
        return self.tool_call_problem or self.structured_problem


TEXT = AnswerCheck()


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
    """The raw confidence :func:`tierguard.cascade.route` must see to decide as
    :func:`judge_answer` does: none for a ruled-out answer, the tool-call method's value for a call."""
    if check.kind == "tool_call":
        return tool_call_raw(check.method, measured, check.tool_call_problem)
    return None if check.structured_problem is not None else measured


def judge_answer(
    spec: CascadeSpec,
    tier: int,
    raw: float | None,
    *,
    capable_only: bool = False,
    check: AnswerCheck = TEXT,
) -> Judgement:
    """Accept or escalate tier ``tier``'s answer given its raw confidence (None: none known).

    With a ``check``, pass ``effective_raw(check, measured)`` as ``raw``: a non-last tier's invalid
    tool call or structured output escalates with its own reason (``invalid_tool_call``,
    ``invalid_structured_output``) whatever its confidence, as does a tool call under the
    ``escalate`` rule (``tool_call_rule``) or without a confidence (``no_confidence``).
    """
    j = judge(spec, tier, raw)
    if is_last(spec, tier):
        return last_tier_answer(j, capable_only)
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


def failed_call(spec: CascadeSpec, tier: int) -> Judgement:
    """The judgement of a tier call that produced no answer (or whose self-check failed)."""
    return judge(spec, tier, None, error=True)


def early_abort(spec: CascadeSpec, tier: int, seen_logprobs: Sequence[float]) -> Judgement:
    """The judgement of a streamed answer cut short because acceptance became impossible; the
    confidences are those of the tokens seen."""
    j = judge(spec, tier, raw_confidence(spec, seen_logprobs))
    return Judgement(tier, False, "early_abort", j.raw_confidence, j.confidence)


def self_eval_request(request: dict[str, Any], answer: str, prompt: str) -> dict[str, Any]:
    """The one-token verification question: the conversation, the tier's answer as an assistant
    turn, then ``prompt`` as a user turn."""
    return verification_request(
        [
            *request["messages"],
            {"role": "assistant", "content": answer},
            {"role": "user", "content": prompt},
        ]
    )


def verification_request(messages: list[Any]) -> dict[str, Any]:
    """A one-token verification call with ``messages`` (read with :func:`p_yes`)."""
    return {"messages": messages, "max_tokens": 1, "logprobs": True, "top_logprobs": 5, "temperature": 0}


def p_yes(body: dict[str, Any]) -> float | None:
    """P("Y") from a one-token verification reply's logprobs (None when it carries none)."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        return None
    candidates = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
    p_y = p_n = None
    for cand in candidates:
        token = str(cand.get("token", "")).strip().upper()
        lp = cand.get("logprob")
        if not isinstance(lp, int | float):
            continue
        if token in ("Y", "YES") and p_y is None:
            p_y = math.exp(lp)
        elif token in ("N", "NO") and p_n is None:
            p_n = math.exp(lp)
    if p_y is not None:
        return min(1.0, p_y)
    if p_n is not None:
        return max(0.0, 1.0 - p_n)
    return None
