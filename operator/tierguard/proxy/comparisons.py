"""The comparisons ``tierguard tune`` certifies on: each cheaper tier's answer to a request next to
the capable tier's answer (docs/review.md), from a shadow call or an escalated request.

A cheaper attempt whose answer cannot be compared still matters when a lower threshold could have
accepted it, so it is recorded as a disagreement (an unknown answer counts as a loss): a tool call
refused for low confidence (with its confidence), and a streamed answer cut once it could no longer
reach the threshold (with a confidence just below that threshold, an upper bound on what it would
have reached). Attempts escalated whatever the threshold (a failed call, a broken structured
output, the tool-call rule) are left out: no threshold changes their fate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..answers import answers_agree
from ..policy import CascadeSpec
from ..review.store import ShadowResult
from .outcome import Attempt

BELOW = 1e-9  # how far below its threshold an early-aborted answer is recorded


def compare_attempts(
    *,
    response_id: str,
    policy: str,
    revision: str,
    spec: CascadeSpec,
    attempts: Sequence[Attempt],
    answered: str,
    served: str,
    capable: str,
    probability: float,
    source: str,
    cost_usd: float = 0.0,
) -> list[ShadowResult]:
    """One comparison per cheaper attempt in ``attempts`` against the capable tier's ``capable``
    answer; the attempt of tier ``answered`` (the tier the client got its answer from) is
    compared through ``served`` and carries ``cost_usd`` (the shadow call's)."""
    now = time.time()
    thresholds = {t.name: t.confidence.threshold for t in spec.tiers}
    last = spec.tiers[-1].name
    out = []
    for a in attempts:
        j = a.judgement
        if j is None or a.tier == last:
            continue
        text = served if a.tier == answered else a.answer
        confidence = j.confidence
        if text is not None:
            agree = answers_agree(text, capable)
        elif j.reason == "low_confidence" and confidence is not None:
            agree = False  # e.g. a tool call: not comparable as text
        elif j.reason == "early_abort":
            agree, confidence = False, max(0.0, thresholds[a.tier] - BELOW)
        else:
            continue
        out.append(
            ShadowResult(
                response_id,
                now,
                policy,
                revision,
                a.tier,
                agree,
                cost_usd if a.tier == answered else 0.0,
                raw_confidence=j.raw_confidence if j.reason != "early_abort" else None,
                confidence=confidence,
                probability=probability,
                source=source,
                answered=answered,
            )
        )
    return out
