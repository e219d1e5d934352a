"""Thresholds tuned from production labels: the pure decision.

For each tier that can accept (not the last), the labelled review items it answered (its
calibrated confidence ``c``, the label, the inclusion probability ``p``) give an
inclusion-weighted accuracy of the answers it accepts at a threshold ``t``: the items with
``c >= t``, weighted ``1/p``. The accuracy target is ``--target-accuracy``, or the last tier's
reviewed accuracy minus ``--max-accuracy-drop``. The check is on a one-sided lower bound (Wilson
at the Kish effective sample size, as in :mod:`.estimate`), not on the point estimate: the same
"bound, not estimate" rule ``tierguard calibrate`` applies to its accuracy constraint.

- If the current threshold meets the target, it is kept: production labels exist only for
  answers the tier *accepted*, so there is no evidence about answers below the threshold and no
  threshold is ever lowered.
- Otherwise the smallest labelled confidence above the threshold whose accepted set meets the
  target is chosen, capped at ``threshold + max_step`` (the change per run is bounded); when none
  does, the threshold rises by ``max_step``.
- A tier with fewer than ``min_labels`` labelled answers keeps its threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from .estimate import wilson


@dataclass(frozen=True, slots=True)
class Label:
    confidence: float
    correct: bool
    probability: float


@dataclass(frozen=True, slots=True)
class TierChange:
    tier: str
    labels: int
    threshold: float
    new_threshold: float
    accuracy: float | None  # weighted accuracy of the accepted labelled answers at the old threshold
    lower_bound: float | None
    reason: str  # kept | too_few_labels | raised | raised_max_step


def accepted_bound(
    labels: Sequence[Label], threshold: float, z: float
) -> tuple[float | None, float | None, int]:
    """(weighted accuracy, its lower bound, count) of the labelled answers at or above ``threshold``."""
    kept = [lb for lb in labels if lb.confidence >= threshold and lb.probability > 0]
    if not kept:
        return None, None, 0
    w = [1.0 / lb.probability for lb in kept]
    w_sum = sum(w)
    acc = sum(wi for wi, lb in zip(w, kept, strict=True) if lb.correct) / w_sum
    n_eff = w_sum * w_sum / sum(wi * wi for wi in w)
    return acc, wilson(acc, n_eff, z)[0], len(kept)


def tune_tier(
    tier: str,
    labels: Sequence[Label],
    threshold: float,
    target: float,
    *,
    max_step: float = 0.05,
    min_labels: int = 50,
    confidence: float = 0.9,
) -> TierChange:
    z = NormalDist().inv_cdf(confidence)
    acc, low, n = accepted_bound(labels, threshold, z)
    if n < min_labels:
        return TierChange(tier, n, threshold, threshold, acc, low, "too_few_labels")
    assert low is not None
    if low >= target:
        return TierChange(tier, n, threshold, threshold, acc, low, "kept")
    ceiling = min(1.0, threshold + max_step)
    for c in sorted({lb.confidence for lb in labels if threshold < lb.confidence <= ceiling}):
        _a, lo, k = accepted_bound(labels, c, z)
        if k >= min_labels and lo is not None and lo >= target:
            return TierChange(tier, n, threshold, round(c, 6), acc, low, "raised")
    return TierChange(tier, n, threshold, round(ceiling, 6), acc, low, "raised_max_step")
