"""Stratified review sampling: which answers a reviewer sees, and with what inclusion probability.

A stratum is (revision, tier, confidence band); the bands are cut at ``ReviewSpec.bandEdges`` on
the answer's calibrated confidence (``none`` when the answering tier reports none). An answer's
target probability is

    target = rate * bandWeight(band) * noveltyWeight(novelty),
    noveltyWeight = 1 + (noveltyBoost - 1) * max(0, (novelty - 0.5) / 0.5)

so low-confidence answers and queries unlike the calibration prompts (high novelty, see
:mod:`tierguard.review.novelty`) are oversampled: the long tail, where a cheap tier fails, instead
of the easy bulk.

Per-stratum hourly quota: each stratum remembers the sum of its targets over the last full hour
(or, in its first hour, the running sum extrapolated to the hour); when that sum exceeds
``quotaPerHour`` every target in the stratum is scaled by ``quotaPerHour / sum``, so the expected
number of sampled items per hour stays within the quota and the probability is still known when
the item is drawn. A hard cap at ``HARD_CAP`` times the quota stops sampling a stratum for the rest
of the hour (a burst guard, counted as ``quota``: the only case where the recorded probability
overstates the real one; at the expected quota a Poisson count reaches twice it with probability
about 1e-4).

Every sampled item carries the probability it was drawn with: the Horvitz-Thompson weight
``1 / p`` of :mod:`tierguard.review.estimate`. Pure: the clock and the random source are passed in.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..policy import ReviewSpec

HOUR = 3600.0
HARD_CAP = 2
MIN_HOUR_FRACTION = 1 / 60  # extrapolate a first hour from at least a minute's worth of traffic


@dataclass(frozen=True, slots=True)
class Stratum:
    revision: str
    tier: str
    band: str


@dataclass(frozen=True, slots=True)
class Draw:
    stratum: Stratum
    sampled: bool
    probability: float  # the inclusion probability the item was drawn with
    reason: str  # sampled | not_drawn | quota | off
    novelty: float | None = None  # None: not computed (the draw could not select the answer)


def band_names(edges: list[float]) -> list[str]:
    """``[0.5, 0.8]`` -> ``["0-0.5", "0.5-0.8", "0.8-1"]``."""
    cuts = ["0", *(f"{e:g}" for e in edges), "1"]
    return [f"{a}-{b}" for a, b in itertools.pairwise(cuts)]


def band_of(confidence: float | None, edges: list[float]) -> int | None:
    """The band index of a calibrated confidence (None when there is none)."""
    if confidence is None or math.isnan(confidence):
        return None
    return bisect.bisect_right(edges, confidence)


def novelty_weight(novelty: float, boost: float) -> float:
    return 1.0 + (boost - 1.0) * max(0.0, (min(novelty, 1.0) - 0.5) / 0.5)


@dataclass
class _Hour:
    hour: int
    seen: int = 0
    sampled: int = 0
    target_sum: float = 0.0


@dataclass
class StratumState:
    current: _Hour
    previous_target_sum: float | None = None  # of the last full hour, when there was one
    nw_sum: float = 0.0  # novelty weights of the answers whose novelty was computed
    nw_n: int = 0

    @property
    def mean_novelty_weight(self) -> float:
        return self.nw_sum / self.nw_n if self.nw_n else 1.0

    def roll(self, hour: int) -> None:
        if hour != self.current.hour:
            self.previous_target_sum = self.current.target_sum if hour == self.current.hour + 1 else 0.0
            self.current = _Hour(hour)


@dataclass(frozen=True, slots=True)
class StratumCount:
    """What a stratum saw in one hour: the population counts the estimates are scaled by."""

    hour: int
    stratum: Stratum
    seen: int
    sampled: int
    confidence_sum: float = 0.0  # calibrated confidences of the answers seen (the difference estimate)
    confidence_n: int = 0  # answers seen with a calibrated confidence


class Sampler:
    def __init__(self, spec: ReviewSpec, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.bands = band_names(spec.band_edges)
        self.rng = rng or random.Random()
        self.strata: dict[Stratum, StratumState] = {}
        # (hour, stratum) -> [seen, sampled, confidence sum, answers with a confidence]
        self._pending: dict[tuple[int, Stratum], list[float]] = {}

    def stratum(self, revision: str, tier: str, confidence: float | None) -> tuple[Stratum, float]:
        """The stratum of an answer and its band weight."""
        i = band_of(confidence, self.spec.band_edges)
        if i is None:
            return Stratum(revision, tier, "none"), self.spec.band_weights[0]
        return Stratum(revision, tier, self.bands[i]), self.spec.band_weights[i]

    def target(self, weight: float, novelty: float) -> float:
        return min(1.0, self.spec.rate * weight * novelty_weight(novelty, self.spec.novelty_boost))

    def draw(
        self,
        revision: str,
        tier: str,
        confidence: float | None,
        novelty: float | Callable[[], float],
        now: float,
    ) -> Draw:
        """Draw one answer. ``novelty`` may be a function: it is then called only when the draw
        could still select the answer at the highest novelty weight (``u < p_max``), which keeps
        the score off most requests without changing any inclusion probability: ``u`` is
        uniform and independent of the novelty, so ``P(sampled) = P(u < p) = p`` for ``p <= p_max``."""
        stratum, weight = self.stratum(revision, tier, confidence)
        hour = int(now // HOUR)
        state = self.strata.get(stratum)
        if state is None:
            state = self.strata[stratum] = StratumState(_Hour(hour))
        state.roll(hour)
        cur = state.current
        cur.seen += 1
        counts = self._pending.setdefault((hour, stratum), [0, 0, 0.0, 0])
        counts[0] += 1
        if stratum.band != "none" and confidence is not None:
            counts[2] += confidence
            counts[3] += 1
        base = self.spec.rate * weight
        if base <= 0.0:
            return Draw(stratum, False, 0.0, "off")
        quota = self.spec.quota_per_hour
        if state.previous_target_sum is not None and state.previous_target_sum > 0.0:
            expected = state.previous_target_sum
        else:
            elapsed = max(now / HOUR - hour, MIN_HOUR_FRACTION)
            expected = (cur.target_sum + min(1.0, base * state.mean_novelty_weight)) / elapsed
        scale = min(1.0, quota / expected) if expected > 0 else 1.0
        u = self.rng.random()
        nov: float | None
        if callable(novelty):
            p_max = min(1.0, base * self.spec.novelty_boost) * scale
            nov = novelty() if u < p_max else None
        else:
            nov = novelty
        if nov is None:
            nw = state.mean_novelty_weight  # for the quota's bookkeeping only
        else:
            nw = novelty_weight(nov, self.spec.novelty_boost)
            state.nw_sum += nw
            state.nw_n += 1
        target = min(1.0, base * nw)
        cur.target_sum += target
        p = target * scale
        if nov is None or u >= p:
            return Draw(stratum, False, p, "not_drawn", nov)
        if cur.sampled >= HARD_CAP * quota:
            return Draw(stratum, False, p, "quota", nov)
        cur.sampled += 1
        counts[1] += 1
        return Draw(stratum, True, p, "sampled", nov)

    def drain_counts(self) -> list[StratumCount]:
        """Counts accumulated since the last drain (the writer adds them to the store)."""
        out = [
            StratumCount(h, s, int(c[0]), int(c[1]), c[2], int(c[3])) for (h, s), c in self._pending.items()
        ]
        self._pending = {}
        return out
