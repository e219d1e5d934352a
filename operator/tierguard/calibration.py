"""Fitting each tier's calibration map and choosing thresholds on recorded outcomes (pure).

``tierguard calibrate`` (:mod:`tierguard.calibrate`) runs this on a file and writes the policy;
``tierguard replay`` runs it on the train split before it reports on the test split.

Calibration: isotonic regression (pool-adjacent-violators) of "the tier's answer was correct" on
its raw confidence. Each pooled block's rate is shrunk towards 1/2 (``(k + 1) / (n + 2)``), so a
block of a few all-correct answers never claims certainty; small blocks are merged; the map is
thinned to at most ``max_points`` points. The result is the ``TierConfidence.calibration``
points, a monotone piecewise-linear map the proxy applies to every answer.

Thresholds: every combination of candidate thresholds (the calibrated values at the map's points,
plus 1.0 = never accept) is routed through :func:`tierguard.cascade.route` over the training rows,
the decision code the proxy runs, and the best one for the stated objective is kept:

- ``max_accuracy_drop`` X (default 0.01): the largest savings versus the capable tier alone
  whose accuracy is at least the capable tier's minus X;
- ``target_cost`` F: the highest accuracy at a mean cost of at most F times the capable tier's.

Cascades with more than three tiers are searched by coordinate ascent instead of exhaustively.

Drift reference: with the chosen maps and thresholds, each tier's calibrated confidence on the rows
that reach it (every row for the first tier, the escalated ones for the next) is binned on
:data:`tierguard.drift.CONFIDENCE_EDGES` and written as ``TierConfidence.reference``; the proxy
exports the PSI of its recent answers against it (docs/drift.md). A tier reached by fewer than
``min_reference_rows`` rows gets none: a reference from a handful of answers would make the PSI
noisy.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from .cascade import route
from .drift import reference_fractions
from .errors import UserError
from .outcomes import Row
from .policy import CascadePolicySpec, CascadeSpec

MAX_POINTS = 20
MIN_REFERENCE_ROWS = 100
MIN_BLOCK = 10
EXHAUSTIVE_LIMIT = 4000
# Training sets are small (hundreds of rows): the accuracy constraint is checked on a one-sided
# confidence bound of the paired accuracy gap, not on the point estimate alone.
DEFAULT_CONFIDENCE = 0.9
NEVER_ACCEPTS = (
    "warning: no thresholds meet the objective on these rows: every query escalates to the last tier, "
    "so the cascade costs more than the capable tier alone (use mode capable-only, or relax the objective)"
)


# --- isotonic calibration ----------------------------------------------------------------------


@dataclass
class Block:
    """Answers pooled by PAV: ``n`` answers, ``k`` correct, raw confidences summing to ``raw_sum``."""

    raw_sum: float
    n: int
    k: float
    lo: float = 0.0  # smallest raw confidence in the block
    hi: float = 0.0  # largest

    @property
    def raw(self) -> float:
        return self.raw_sum / self.n

    @property
    def rate(self) -> float:
        return self.k / self.n

    @property
    def shrunk(self) -> float:
        return (self.k + 1.0) / (self.n + 2.0)

    def merged(self, other: Block) -> Block:
        return Block(
            self.raw_sum + other.raw_sum,
            self.n + other.n,
            self.k + other.k,
            min(self.lo, other.lo),
            max(self.hi, other.hi),
        )


def pav(raw: Sequence[float], correct: Sequence[bool]) -> list[Block]:
    """Pool-adjacent-violators over answers sorted by raw confidence; ties are pooled first."""
    if len(raw) != len(correct):
        raise ValueError("raw and correct differ in length")
    pairs = sorted(zip(raw, correct, strict=True))
    blocks: list[Block] = []
    for x, y in pairs:
        if blocks and blocks[-1].raw == x:  # identical raw values must share a block
            b = blocks[-1]
            blocks[-1] = Block(b.raw_sum + x, b.n + 1, b.k + float(y), b.lo, x)
        else:
            blocks.append(Block(x, 1, float(y), x, x))
    return _pool(blocks, key=lambda b: b.rate)


def _pool(blocks: list[Block], key: Any) -> list[Block]:
    out: list[Block] = []
    for b in blocks:
        out.append(b)
        while len(out) > 1 and key(out[-2]) > key(out[-1]):
            top = out.pop()
            out[-1] = out[-1].merged(top)
    return out


def fit_calibration(
    raw: Sequence[float], correct: Sequence[bool], *, max_points: int = MAX_POINTS, min_block: int = MIN_BLOCK
) -> list[tuple[float, float]]:
    """A monotone map raw -> P(correct) as at most ``max_points`` (raw, calibrated) points.

    Each pooled block becomes two points, at its smallest and largest raw confidence, both at the
    block's rate: the isotonic step function, with linear ramps only in the gaps between blocks.
    So an answer is mapped to its block's rate, and a threshold at a block's rate accepts exactly
    the answers from that block's lower edge up.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if not raw:
        return []
    blocks = pav(raw, correct)
    # Pool again on the shrunk rates (shrinking can reorder neighbours of very different sizes).
    blocks = _pool(blocks, key=lambda b: b.shrunk)
    # Merge blocks smaller than min_block into the neighbour with the closer rate.
    while len(blocks) > 1:
        small = [i for i, b in enumerate(blocks) if b.n < min_block]
        if not small:
            break
        i = min(small, key=lambda j: blocks[j].n)
        j = _closer_neighbour(blocks, i)
        lo, hi = min(i, j), max(i, j)
        blocks[lo : hi + 1] = [blocks[lo].merged(blocks[hi])]
    # Thin: merge the adjacent pair with the closest rates until few enough points remain.
    while len(blocks) > max_points // 2:
        i = min(range(len(blocks) - 1), key=lambda j: blocks[j + 1].shrunk - blocks[j].shrunk)
        blocks[i : i + 2] = [blocks[i].merged(blocks[i + 1])]
    points: list[tuple[float, float]] = []
    for b in blocks:
        y = min(max(round(b.shrunk, 6), 0.0), 1.0)
        for x in sorted({round(b.lo, 9), round(b.hi, 9)}):
            x = min(max(x, 0.0), 1.0)
            if points and x <= points[-1][0]:
                # rounding joined this edge with the previous point: keep the higher block's rate
                points[-1] = (points[-1][0], max(points[-1][1], y))
                continue
            points.append((x, max(y, points[-1][1]) if points else y))
    if len(points) == 1:  # one block: a constant map, written with two points
        y = points[0][1]
        points = [(0.0, y), (1.0, y)]
    return points


def _closer_neighbour(blocks: list[Block], i: int) -> int:
    if i == 0:
        return 1
    if i == len(blocks) - 1:
        return i - 1
    left = blocks[i].shrunk - blocks[i - 1].shrunk
    right = blocks[i + 1].shrunk - blocks[i].shrunk
    return i - 1 if left <= right else i + 1


def brier(probs: Sequence[float], correct: Sequence[bool]) -> float:
    return sum((p - float(c)) ** 2 for p, c in zip(probs, correct, strict=True)) / max(1, len(probs))


# --- applying to a spec ------------------------------------------------------------------------


def with_confidence(
    spec: CascadePolicySpec,
    *,
    calibrations: Sequence[list[tuple[float, float]] | None] | None = None,
    thresholds: Sequence[float] | None = None,
    references: Sequence[list[float] | None] | None = None,
) -> CascadePolicySpec:
    """A copy of ``spec`` with the given per-tier calibration maps, thresholds and/or drift
    references (a ``None`` reference removes the tier's reference)."""
    tiers = []
    for i, tier in enumerate(spec.tiers):
        update: dict[str, Any] = {}
        if calibrations is not None and calibrations[i] is not None:
            update["calibration"] = [[x, y] for x, y in calibrations[i] or []]
        if thresholds is not None and i < len(thresholds):
            update["threshold"] = float(thresholds[i])
        if references is not None and i < len(references):
            update["reference"] = references[i]
        conf = tier.confidence.model_validate({**tier.confidence.model_dump(), **update})
        tiers.append(tier.model_copy(update={"confidence": conf}))
    return spec.model_copy(update={"tiers": tiers})


def fit_calibrations(
    spec: CascadeSpec, rows: Sequence[Row], *, max_points: int = MAX_POINTS
) -> list[list[tuple[float, float]] | None]:
    """One fitted map per tier (None for a tier without any recorded confidence)."""
    out: list[list[tuple[float, float]] | None] = []
    for i in range(len(spec.tiers)):
        pairs = [(r.raw[i], r.correct[i]) for r in rows if r.raw[i] is not None]
        if not pairs:
            out.append(None)
            continue
        out.append(fit_calibration([p[0] for p in pairs if p[0] is not None], [p[1] for p in pairs]))
    return out


def reached_confidences(spec: CascadeSpec, rows: Sequence[Row]) -> list[list[float]]:
    """Per tier: the calibrated confidences of the rows that reach it, routed with ``spec``.

    The same values the proxy observes for that tier's answers (a tier sees only the traffic the
    tiers before it escalated).
    """
    out: list[list[float]] = [[] for _ in spec.tiers]
    for r in rows:
        for j in route(spec, r.raw).judgements:
            if j.confidence is not None:
                out[j.tier].append(j.confidence)
    return out


def fit_references(
    spec: CascadeSpec, rows: Sequence[Row], *, min_rows: int = MIN_REFERENCE_ROWS
) -> tuple[list[list[float] | None], list[int]]:
    """(reference per tier, None where fewer than ``min_rows`` rows reach it; rows per tier)."""
    values = reached_confidences(spec, rows)
    refs = [reference_fractions(v) if v and len(v) >= min_rows else None for v in values]
    return refs, [len(v) for v in values]


# --- threshold selection -----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    thresholds: tuple[float, ...]
    accuracy: float
    cost: float  # mean USD per query, every tier called paid for
    shares: tuple[float, ...]  # fraction answered by each tier
    gap_se: float = 0.0  # standard error of (accuracy - last tier's accuracy), paired over rows


def evaluate(spec: CascadeSpec, rows: Sequence[Row]) -> Evaluation:
    """Route every row with the proxy's decision code; mean accuracy and cost."""
    n = len(rows)
    if n == 0:
        raise ValueError("no rows to evaluate")
    answered = [0] * len(spec.tiers)
    correct = 0
    cost = 0.0
    d_sum = 0
    d_sq = 0
    for r in rows:
        rt = route(spec, r.raw)
        answered[rt.answered_by] += 1
        ok = r.correct[rt.answered_by]
        correct += ok
        cost += sum(r.cost[: rt.answered_by + 1])
        d = int(ok) - int(r.correct[-1])
        d_sum += d
        d_sq += d * d
    mean_d = d_sum / n
    var_d = max(0.0, d_sq / n - mean_d * mean_d) * n / max(1, n - 1)
    return Evaluation(
        thresholds=tuple(t.confidence.threshold for t in spec.tiers),
        accuracy=correct / n,
        cost=cost / n,
        shares=tuple(a / n for a in answered),
        gap_se=math.sqrt(var_d / n),
    )


@dataclass(frozen=True)
class SelectionObjective:
    max_accuracy_drop: float | None = 0.01
    target_cost: float | None = None  # fraction of the capable tier's cost
    # One-sided confidence that the accuracy constraint holds: the paired lower bound
    # (accuracy gap - z * standard error) must stay above -max_accuracy_drop. 0.5 or less: the
    # point estimate alone.
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(self.confidence) if self.confidence > 0.5 else 0.0

    def describe(self) -> str:
        if self.target_cost is not None:
            return f"highest accuracy at cost <= {self.target_cost:g} x capable tier"
        bound = f" (one-sided {self.confidence:.0%} bound)" if self.z > 0 else " (point estimate)"
        return f"largest savings at accuracy >= capable tier - {self.max_accuracy_drop:g}{bound}"


@dataclass(frozen=True)
class Baseline:
    accuracy: float
    cost: float


def capable_baseline(rows: Sequence[Row]) -> Baseline:
    n = len(rows)
    if n == 0:
        raise ValueError("no rows")
    return Baseline(sum(r.correct[-1] for r in rows) / n, sum(r.cost[-1] for r in rows) / n)


def _rank(ev: Evaluation, base: Baseline, obj: SelectionObjective) -> tuple[float, ...]:
    """Sort key, larger is better: feasible first, then the objective, then tie-breaks."""
    conservative = sum(ev.thresholds)
    if obj.target_cost is not None:
        feasible = ev.cost <= obj.target_cost * base.cost + 1e-15
        return (float(feasible), ev.accuracy if feasible else -ev.cost, -ev.cost, conservative)
    drop = obj.max_accuracy_drop if obj.max_accuracy_drop is not None else 0.0
    feasible = ev.accuracy - obj.z * ev.gap_se >= base.accuracy - drop - 1e-12
    return (float(feasible), -ev.cost if feasible else ev.accuracy, ev.accuracy, conservative)


def candidate_thresholds(spec: CascadeSpec) -> list[list[float]]:
    """Per non-last tier: the calibrated values at its map's points, and 1.0 (never accept)."""
    out = []
    for tier in spec.tiers[:-1]:
        points = tier.confidence.calibration or []
        out.append(sorted({float(p[1]) for p in points} | {1.0}))
    return out


def search(
    spec: CascadePolicySpec,
    rows: Sequence[Row],
    base: Baseline,
    objective: SelectionObjective,
    *,
    progress: bool = False,
) -> list[Evaluation]:
    """Evaluate candidate threshold combinations: all of them when few enough, else coordinate ascent."""
    cands = candidate_thresholds(spec)
    last = spec.tiers[-1].confidence.threshold
    total = math.prod(len(c) for c in cands)
    results: list[Evaluation] = []
    if total <= EXHAUSTIVE_LIMIT:
        for k, combo in enumerate(itertools.product(*cands)):
            results.append(evaluate(with_confidence(spec, thresholds=(*combo, last)), rows))
            if progress and k % 100 == 99:
                print(f"  thresholds searched: {k + 1}/{total}", file=sys.stderr, end="\r")
        if progress and total >= 100:
            print(file=sys.stderr)
        return results
    # Long cascades: optimise one tier's threshold at a time, the others fixed; a few passes.
    current = [1.0] * len(cands)
    for _ in range(3):
        for i, options in enumerate(cands):
            trials = []
            for t in options:
                trial = list(current)
                trial[i] = t
                trials.append(evaluate(with_confidence(spec, thresholds=(*trial, last)), rows))
            results.extend(trials)
            current = list(choose(trials, base, objective).thresholds[:-1])
    return results


def choose(results: Sequence[Evaluation], base: Baseline, objective: SelectionObjective) -> Evaluation:
    return max(results, key=lambda e: _rank(e, base, objective))


@dataclass
class Calibration:
    spec: CascadePolicySpec
    chosen: Evaluation
    baseline: Baseline
    results: list[Evaluation]
    brier_raw: list[float | None]
    brier_calibrated: list[float | None]
    n_rows: int
    reference_rows: list[int] | None = None  # rows that reached each tier (its drift reference)
    min_reference_rows: int = MIN_REFERENCE_ROWS


def calibrate(
    spec: CascadePolicySpec,
    rows: Sequence[Row],
    objective: SelectionObjective = SelectionObjective(),
    *,
    max_points: int = MAX_POINTS,
    progress: bool = False,
    min_reference_rows: int = MIN_REFERENCE_ROWS,
) -> Calibration:
    """Fit maps on ``rows``, choose thresholds for ``objective`` on the same rows, then record
    each tier's drift reference under those maps and thresholds."""
    if not rows:
        raise UserError("no rows to calibrate on (check --split / --benchmark)")
    maps = fit_calibrations(spec, rows, max_points=max_points)
    fitted = with_confidence(spec, calibrations=maps)
    base = capable_baseline(rows)
    results = search(fitted, rows, base, objective, progress=progress)
    chosen = choose(results, base, objective)
    final = with_confidence(fitted, thresholds=chosen.thresholds)
    refs, reached = fit_references(final, rows, min_rows=min_reference_rows)
    final = with_confidence(final, references=refs)
    b_raw: list[float | None] = []
    b_cal: list[float | None] = []
    for i, tier in enumerate(final.tiers):
        pairs = [(r.raw[i], r.correct[i]) for r in rows if r.raw[i] is not None]
        if not pairs:
            b_raw.append(None)
            b_cal.append(None)
            continue
        cmap = tier.confidence.calibration_map()
        raws = [float(p[0] or 0.0) for p in pairs]
        ys = [p[1] for p in pairs]
        b_raw.append(brier(raws, ys))
        b_cal.append(brier([cmap(x) for x in raws], ys))
    return Calibration(final, chosen, base, results, b_raw, b_cal, len(rows), reached, min_reference_rows)


def needs_fit(spec: CascadeSpec) -> bool:
    """True when a tier that can accept (not the last) has no calibration map."""
    return any(not t.confidence.calibration for t in spec.tiers[:-1])
