"""Drift and quality-change detectors: pure functions and small streaming state machines, no I/O.

Used by ``tierguard replay`` (what the monitors would have seen on recorded traffic), by
``tierguard calibrate`` (a tier's reference distribution) and by the proxy's live monitor
(``tierguard.proxy.drift_monitor``, the ``tierguard_confidence_psi`` gauge). All of them bin on
:data:`CONFIDENCE_EDGES` and compute PSI with :func:`psi`, so a number seen in a replay and one
exported by the proxy mean the same thing.

- :func:`psi`: the population stability index between two binned distributions,
  ``sum((a - e) * ln(a / e))`` over bins with fractions floored at ``eps`` (an empty bin would
  otherwise make it infinite). Bins are fixed once (:data:`CONFIDENCE_EDGES`, or
  :func:`quantile_edges` of a reference sample) and never re-derived from the data under test.
- :class:`PSIWindow`: PSI of the last ``window`` values against a reference, evaluated every
  ``step`` values.
- :func:`reference_fractions` / :func:`check_reference`: a tier's reference distribution as
  stored in a policy (``TierConfidence.reference``): bin proportions on
  :data:`CONFIDENCE_EDGES`, written by ``tierguard calibrate`` and watched by the proxy.
- :class:`BernoulliCUSUM`: a one-sided CUSUM on a stream of 0/1 events (an error found by human
  review, a shadow disagreement) that accumulates the log-likelihood ratio of rate ``p1``
  against the baseline ``p0`` and fires when it exceeds ``threshold``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence

from .confidence import interpolate, quantile

DEFAULT_EPS = 1e-4

# Fixed bins for answer confidences in [0, 1]. Confidences from token log-probabilities pile up
# near 1, so the edges are dense there.
CONFIDENCE_EDGES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)


CONFIDENCE_BINS = len(CONFIDENCE_EDGES) + 1

# A stored reference's proportions must sum to 1 within this (they are rounded when written).
REFERENCE_SUM_TOLERANCE = 1e-3
REFERENCE_DIGITS = 6


def quantile_edges(reference: Sequence[float], bins: int = 10) -> list[float]:
    """Inner bin edges at the reference sample's quantiles (duplicates removed).

    A value ``v`` falls in bin ``bisect_right(edges, v)``, so there are ``len(edges) + 1`` bins.
    Ties in the reference (e.g. many confidences of exactly 1.0) collapse edges, giving fewer
    bins rather than empty ones.
    """
    if bins < 2:
        raise ValueError("need at least 2 bins")
    values = sorted(float(v) for v in reference)
    if not values:
        raise ValueError("quantile edges of an empty reference")
    edges: list[float] = []
    n = len(values)
    for i in range(1, bins):
        e = interpolate(values.__getitem__, n, i * (n - 1) / bins)
        if (not edges or e > edges[-1]) and e < values[-1]:
            edges.append(e)
    if not edges and values[0] < values[-1]:
        edges.append((values[0] + values[-1]) / 2)
    return edges


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin; bin ``i`` holds ``edges[i-1] <= v < edges[i]``."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect_right(edges, v)] += 1
    return counts


def fractions(counts: Sequence[int | float]) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("fractions of an empty histogram")
    return [c / total for c in counts]


def reference_fractions(
    values: Iterable[float], edges: Sequence[float] = CONFIDENCE_EDGES, digits: int = REFERENCE_DIGITS
) -> list[float]:
    """The proportion of ``values`` in each bin of ``edges``, rounded to ``digits`` decimals.

    This is the form of ``TierConfidence.reference``: ``len(edges) + 1`` non-negative numbers
    summing to 1 (within :data:`REFERENCE_SUM_TOLERANCE` after rounding).
    """
    return [round(f, digits) for f in fractions(histogram(values, edges))]


def check_reference(reference: Sequence[float], edges: Sequence[float] = CONFIDENCE_EDGES) -> None:
    """Raise ``ValueError`` (saying what is wrong) unless ``reference`` is a usable distribution."""
    bins = len(edges) + 1
    if len(reference) != bins:
        raise ValueError(
            f"a reference needs {bins} proportions (one per confidence bin), got {len(reference)}"
        )
    for i, v in enumerate(reference):
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"reference proportion {i} is {v}: proportions must be finite and >= 0")
    total = math.fsum(reference)
    if abs(total - 1.0) > REFERENCE_SUM_TOLERANCE:
        raise ValueError(f"reference proportions must sum to 1, they sum to {total:.6g}")


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = DEFAULT_EPS) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or fractions).

    Both are normalised to fractions first; each fraction is floored at ``eps``. 0 means the
    same distribution; the customary reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 major.
    """
    if len(expected) != len(actual):
        raise ValueError(f"bin counts differ: {len(expected)} vs {len(actual)}")
    e = fractions(expected)
    a = fractions(actual)
    total = 0.0
    for pe, pa in zip(e, a, strict=True):
        pe, pa = max(pe, eps), max(pa, eps)
        total += (pa - pe) * math.log(pa / pe)
    return total


def psi_of_samples(
    reference: Sequence[float], current: Sequence[float], edges: Sequence[float] = CONFIDENCE_EDGES
) -> float:
    """PSI between two samples of values binned with the same fixed ``edges``."""
    return psi(histogram(reference, edges), histogram(current, edges))


class PSIWindow:
    """PSI of a sliding window of values against a fixed reference distribution.

    ``observe`` returns the PSI of the last ``window`` values every ``step`` values once the
    window is full, else ``None``. ``threshold`` (optional) sets :attr:`fired` when reached.
    """

    def __init__(
        self,
        edges: Sequence[float],
        reference_fractions: Sequence[float],
        *,
        window: int = 500,
        step: int = 100,
        threshold: float | None = None,
        eps: float = DEFAULT_EPS,
    ) -> None:
        if len(reference_fractions) != len(edges) + 1:
            raise ValueError(f"need {len(edges) + 1} reference fractions, got {len(reference_fractions)}")
        if window < 1 or step < 1:
            raise ValueError("window and step must be positive")
        self.edges = list(edges)
        self.reference = fractions(reference_fractions)
        self.window = window
        self.step = step
        self.threshold = threshold
        self.eps = eps
        self._bins: deque[int] = deque()
        self._counts = [0] * (len(self.edges) + 1)
        self._seen = 0
        self.last: float | None = None
        self.fired = False

    @classmethod
    def from_reference(
        cls,
        reference: Sequence[float],
        edges: Sequence[float] = CONFIDENCE_EDGES,
        **kwargs: float | int | None,
    ) -> PSIWindow:
        return cls(edges, histogram(reference, edges), **kwargs)  # type: ignore[arg-type]

    @property
    def count(self) -> int:
        """Values in the window (at most ``window``)."""
        return len(self._bins)

    @property
    def full(self) -> bool:
        return len(self._bins) >= self.window

    @property
    def seen(self) -> int:
        """Values observed in total."""
        return self._seen

    def add(self, value: float) -> None:
        """Slide ``value`` into the window without evaluating the PSI."""
        b = bisect_right(self.edges, value)
        self._bins.append(b)
        self._counts[b] += 1
        if len(self._bins) > self.window:
            self._counts[self._bins.popleft()] -= 1
        self._seen += 1

    def current(self) -> float | None:
        """The PSI of the window now (``None`` until it is full); updates :attr:`last`."""
        if len(self._bins) < self.window:
            return None
        value_psi = psi(self.reference, self._counts, self.eps)
        self.last = value_psi
        if self.threshold is not None and value_psi >= self.threshold:
            self.fired = True
        return value_psi

    def observe(self, value: float) -> float | None:
        self.add(value)
        if self._seen % self.step:
            return None
        return self.current()


class BernoulliCUSUM:
    """One-sided CUSUM for a rise of an event rate from ``p0`` to ``p1`` (``p1 > p0``).

    ``S = max(0, S + llr(x))`` with ``llr(1) = ln(p1/p0)`` and ``llr(0) = ln((1-p1)/(1-p0))``;
    fires when ``S >= threshold``. The threshold sets the false-alarm rate (calibrate it on
    traffic known to be healthy); :attr:`peak` is the largest statistic seen, which is what such a
    calibration needs.
    """

    def __init__(self, p0: float, p1: float, threshold: float = math.inf) -> None:
        if not 0.0 < p0 < p1 < 1.0:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
        self.p0 = p0
        self.p1 = p1
        self.threshold = threshold
        self.up = math.log(p1 / p0)
        self.down = math.log((1.0 - p1) / (1.0 - p0))
        self.statistic = 0.0
        self.peak = 0.0
        self.n = 0
        self.fired = False

    def observe(self, event: bool) -> bool:
        """Add one observation; True once the detector has fired."""
        self.n += 1
        self.statistic = max(0.0, self.statistic + (self.up if event else self.down))
        if self.statistic > self.peak:
            self.peak = self.statistic
        if self.statistic >= self.threshold:
            self.fired = True
        return self.fired

    def reset(self) -> None:
        self.statistic = 0.0
        self.fired = False


def rate_shift(p0: float, delta: float) -> float:
    """The alternative rate a CUSUM watches for: ``p0 + delta``, kept inside (p0, 1)."""
    if delta <= 0:
        raise ValueError("delta must be positive")
    return min(p0 + delta, (p0 + 1.0) / 2)


def upper_quantile(values: Sequence[float], alpha: float) -> float:
    """The (1 - alpha) quantile of ``values``: a threshold exceeded by about ``alpha`` of them."""
    if not values:
        raise ValueError("no values")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    return quantile(sorted(values), 1.0 - alpha)
