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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .cascade import Judgement, Reason, judge, raw_confidence
from .policy import CascadeSpec


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


def judge_answer(spec: CascadeSpec, tier: int, raw: float | None, *, capable_only: bool = False) -> Judgement:
    """Accept or escalate tier ``tier``'s answer given its raw confidence (None: none known)."""
    j = judge(spec, tier, raw)
    return last_tier_answer(j, capable_only) if is_last(spec, tier) else j


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
    return {
        "messages": [
            *request["messages"],
            {"role": "assistant", "content": answer},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 5,
        "temperature": 0,
    }


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
