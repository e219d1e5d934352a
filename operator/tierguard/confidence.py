"""Confidence of one tier's answer: token log-probabilities -> raw score -> calibrated score.

Pure functions only. The same code runs in the proxy (live answers), in `tierguard replay`
(recorded answers) and in `tierguard calibrate` (fitting the map), so every number the
product reports comes from one implementation.

Aggregation works in probability space:
- ``min``: the least likely token. Sensitive to one doubtful token, independent of length.
- ``quantile``: a low quantile (default 0.1) of the token probabilities; more robust than the
  minimum on long answers, and, unlike the mean, not inflated by many easy tokens.
- ``mean``: the arithmetic mean of token probabilities (length-biased; offered for comparison).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

Aggregate = Literal["min", "mean", "quantile"]


def token_probabilities(logprobs: Sequence[float]) -> list[float]:
    """exp() of each log-probability, clamped to [0, 1] (providers round to slightly > 0)."""
    return [min(1.0, math.exp(lp)) if lp > -745.0 else 0.0 for lp in logprobs]


def interpolate(at: Callable[[int], float], n: int, pos: float) -> float:
    """The value at fractional index ``pos`` of ``n`` ordered values ``at(0) .. at(n - 1)``, linearly
    interpolated between its neighbours. At ``pos = q * (n - 1)`` this is the ``q`` quantile by
    numpy's default method; every quantile in the package is computed here."""
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    low = at(lo)
    return low + (at(hi) - low) * (pos - lo)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    return interpolate(sorted_values.__getitem__, len(sorted_values), q * (len(sorted_values) - 1))


def aggregate(logprobs: Sequence[float], method: Aggregate = "quantile", q: float = 0.1) -> float:
    """Raw confidence in [0, 1] of an answer from its token log-probabilities.

    An answer without tokens has confidence 0: nothing supports accepting it.
    """
    probs = token_probabilities(logprobs)
    if not probs:
        return 0.0
    if method == "min":
        return min(probs)
    if method == "mean":
        return sum(probs) / len(probs)
    if method == "quantile":
        return quantile(sorted(probs), q)
    raise ValueError(f"unknown aggregation {method!r}")


def best_case(
    seen_logprobs: Sequence[float], max_tokens: int, method: Aggregate = "quantile", q: float = 0.1
) -> float:
    """The highest raw confidence the answer can still reach after ``seen_logprobs``.

    Assumes every token still to come has probability 1 and that the answer runs to
    ``max_tokens`` (more certain tokens only raise a min, a mean or a low quantile, never lower
    them). If this bound is below the threshold, acceptance has become impossible and a
    streaming tier can be stopped at once (early abort).
    """
    probs = token_probabilities(seen_logprobs)
    if not probs:
        return 1.0
    n_total = max(max_tokens, len(probs))
    n_future = n_total - len(probs)
    if method == "min":
        return min(probs)
    if method == "mean":
        return (sum(probs) + n_future) / n_total
    if method == "quantile":
        ordered = sorted(probs)

        def at(i: int) -> float:
            return ordered[i] if i < len(ordered) else 1.0

        return interpolate(at, n_total, q * (n_total - 1))
    raise ValueError(f"unknown aggregation {method!r}")


class CalibrationMap:
    """A monotone piecewise-linear map from raw confidence to calibrated probability of correctness.

    Points are (raw, calibrated) pairs sorted by raw with non-decreasing calibrated values;
    values outside the first and last raw point are clamped. With no points the map is the
    identity.
    """

    __slots__ = ("_xs", "_ys")

    def __init__(self, points: Sequence[tuple[float, float]] = ()) -> None:
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
        for i in range(1, len(xs)):
            if xs[i] <= xs[i - 1]:
                raise ValueError("calibration points must have strictly increasing raw values")
            if ys[i] < ys[i - 1]:
                raise ValueError("calibration points must have non-decreasing calibrated values")
        for v in (*xs, *ys):
            if not 0.0 <= v <= 1.0:
                raise ValueError("calibration values must lie in [0, 1]")
        self._xs = xs
        self._ys = ys

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(zip(self._xs, self._ys, strict=True))

    def __call__(self, raw: float) -> float:
        xs, ys = self._xs, self._ys
        if not xs:
            return min(1.0, max(0.0, raw))
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1]:
            return ys[-1]
        # binary search for the segment
        lo, hi = 0, len(xs) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if xs[mid] <= raw:
                lo = mid
            else:
                hi = mid
        span = xs[hi] - xs[lo]
        return ys[lo] + (ys[hi] - ys[lo]) * (raw - xs[lo]) / span


IDENTITY = CalibrationMap()


def confidence_bucket(confidence: float, buckets: int = 10) -> int:
    """The decile (0..buckets-1) a confidence falls in; used in signed response ids and metrics."""
    return min(buckets - 1, max(0, int(confidence * buckets)))
