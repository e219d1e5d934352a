"""Fitting each tier's calibration map and choosing thresholds on recorded outcomes (pure).

``tierguard calibrate`` (:mod:`tierguard.calibrate`) runs this on a file and writes the policy;
``tierguard replay`` runs it on the train split before it reports on the test split.

Calibration: isotonic regression (pool-adjacent-violators) of "the tier's answer was correct" on
its raw confidence. Each pooled block's rate is shrunk towards 1/2 (``(k + 1) / (n + 2)``), so a
block of a few all-correct answers never claims certainty; small blocks are merged; the map is
thinned to at most ``max_points`` points. The result is the ``TierConfidence.calibration``
points, a monotone piecewise-linear map the proxy applies to every answer.

Thresholds, two objectives:

- ``--max-accuracy-drop EPS`` (default 0.01) with ``--delta D`` (default 0.1): a *certified*
  policy (:mod:`tierguard.guarantee`, docs/guarantee.md). With probability at least 1 - D over the
  calibration rows, the cascade's accuracy is at most EPS below the capable tier's on traffic
  exchangeable with them. Learn-then-Test: fixed-sequence testing along a raw-confidence path
  fixed in advance, exact p-values; the cheapest certified point is kept, and each tier's map is
  pinned so that its calibrated threshold accepts exactly the certified raw confidences. When
  nothing can be certified the result is the capable tier alone (no cascade is written).
- ``--target-cost F``: the highest accuracy at a mean cost of at most F times the capable tier's,
  searched over combinations of candidate thresholds routed through
  :func:`tierguard.cascade.route` on the training rows (coordinate ascent beyond three tiers).
  No guarantee: the numbers are those of the rows searched on.

Either way a cheaper tier whose threshold can never be reached is dropped from the written policy
(it would be called and paid for without ever answering), and a negative saving on the training
rows is warned about.

Drift reference: with the chosen maps and thresholds, each tier's calibrated confidence on the rows
that reach it (every row for the first tier, the escalated ones for the next) is binned on
:data:`tierguard.drift.CONFIDENCE_EDGES` and written as ``TierConfidence.reference``; the proxy
exports the PSI of its recent answers against it (docs/drift.md). A tier reached by fewer than
``--min-reference-rows`` rows gets none: a reference from a handful of answers would make the PSI
noisy.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .cascade import route
from .drift import reference_fractions
from .errors import UserError
from .guarantee import Certificate, CertificationError, certify, pin_threshold, points, rows_digest
from .guarantee import Row as CertRow
from .outcomes import Row
from .policy import CascadePolicySpec, CascadeSpec

MAX_POINTS = 20
MIN_REFERENCE_ROWS = 100
MIN_BLOCK = 10
EXHAUSTIVE_LIMIT = 4000
DEFAULT_DROP = 0.01
DEFAULT_DELTA = 0.1
GUARANTEE_ANNOTATION = "tierguard.io/guarantee"
NEVER_ACCEPTS = (
    "no cheaper tier can answer under this objective: every query would go to the capable tier, and a "
    "cascade would only add the cheaper tiers' cost; serve the capable tier alone (no cascade written)"
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


def evaluate(spec: CascadeSpec, rows: Sequence[Row]) -> Evaluation:
    """Route every row with the proxy's decision code; mean accuracy and cost."""
    n = len(rows)
    if n == 0:
        raise ValueError("no rows to evaluate")
    answered = [0] * len(spec.tiers)
    correct = 0
    cost = 0.0
    for r in rows:
        rt = route(spec, r.raw)
        answered[rt.answered_by] += 1
        ok = r.correct[rt.answered_by]
        correct += ok
        cost += sum(r.cost[: rt.answered_by + 1])
    return Evaluation(
        thresholds=tuple(t.confidence.threshold for t in spec.tiers),
        accuracy=correct / n,
        cost=cost / n,
        shares=tuple(a / n for a in answered),
    )


@dataclass(frozen=True)
class SelectionObjective:
    max_accuracy_drop: float | None = DEFAULT_DROP  # eps of the certified guarantee
    target_cost: float | None = None  # fraction of the capable tier's cost (no guarantee)
    delta: float = DEFAULT_DELTA  # the guarantee may fail with probability at most this

    @property
    def certified(self) -> bool:
        return self.target_cost is None

    def describe(self) -> str:
        if self.target_cost is not None:
            return f"highest accuracy at cost <= {self.target_cost:g} x capable tier (no guarantee)"
        eps = self.max_accuracy_drop if self.max_accuracy_drop is not None else DEFAULT_DROP
        return (
            f"largest savings certified to keep accuracy >= capable tier - {points(eps)} "
            f"with probability >= {1 - self.delta:.0%} (Learn-then-Test)"
        )


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
    feasible = ev.accuracy >= base.accuracy - drop - 1e-12  # point estimate: search's own use only
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
    spec: CascadePolicySpec  # the written policy (tiers that can never answer dropped)
    chosen: Evaluation  # on the fitted rows, with ``spec``'s tiers (capable-only: the capable tier)
    baseline: Baseline
    results: list[Evaluation]
    brier_raw: list[float | None]
    brier_calibrated: list[float | None]
    n_rows: int
    reference_rows: list[int] | None = None  # rows that reached each tier (its drift reference)
    min_reference_rows: int = MIN_REFERENCE_ROWS
    certificate: Certificate | None = None  # the guarantee (None: --target-cost, none)
    dropped: list[str] = field(default_factory=list)  # names of tiers that could never answer
    capable_only: bool = False  # no cheaper tier answers: serve the capable tier alone
    warnings: list[str] = field(default_factory=list)

    @property
    def savings(self) -> float:
        return 1.0 - self.chosen.cost / self.baseline.cost if self.baseline.cost > 0 else 0.0


def cert_rows(rows: Sequence[Row]) -> list[CertRow]:
    return [CertRow(r.raw, r.correct, r.cost) for r in rows]


def data_hash(rows: Sequence[Row]) -> str:
    return rows_digest(cert_rows(rows), [r.qid for r in rows])


def can_accept(spec: CascadeSpec, tier: int) -> bool:
    """Whether any raw confidence can reach the tier's threshold (the last tier always answers)."""
    if tier == len(spec.tiers) - 1:
        return True
    conf = spec.tiers[tier].confidence
    cmap = conf.calibration_map()
    top = max((y for _, y in cmap.points), default=1.0)
    return top >= conf.threshold


def project(rows: Sequence[Row], keep: Sequence[int]) -> list[Row]:
    """Rows restricted to the tiers ``keep`` (indices, in order)."""

    def pick(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(values[i] for i in keep)

    return [
        Row(
            r.qid,
            r.benchmark,
            r.split,
            r.category,
            r.prompt,
            pick(r.raw),
            pick(r.correct),
            pick(r.cost),
            pick(r.answer),
        )
        for r in rows
    ]


def drop_silent_tiers(spec: CascadePolicySpec) -> tuple[CascadePolicySpec | None, list[int]]:
    """(``spec`` without the cheaper tiers that can never accept, indices kept); None when only
    the capable tier would remain."""
    keep = [i for i in range(len(spec.tiers)) if can_accept(spec, i)]
    if len(keep) < 2:
        return None, keep
    if len(keep) == len(spec.tiers):
        return spec, keep
    return spec.model_copy(update={"tiers": [spec.tiers[i] for i in keep]}), keep


def certified_spec(fitted: CascadePolicySpec, raw_threshold: float) -> CascadePolicySpec:
    """``fitted`` with every cheaper tier's map and threshold pinned to accept exactly the raw
    confidences at or above ``raw_threshold`` (the certified policy)."""
    maps: list[list[tuple[float, float]] | None] = []
    thresholds: list[float] = []
    for tier in fitted.tiers[:-1]:
        points = [(float(p[0]), float(p[1])) for p in tier.confidence.calibration or []]
        pinned, level = pin_threshold(points, raw_threshold)
        maps.append(pinned)
        thresholds.append(level)
    maps.append(None)
    thresholds.append(fitted.tiers[-1].confidence.threshold)
    return with_confidence(fitted, calibrations=maps, thresholds=thresholds)


def calibrate(
    spec: CascadePolicySpec,
    rows: Sequence[Row],
    objective: SelectionObjective = SelectionObjective(),
    *,
    max_points: int = MAX_POINTS,
    progress: bool = False,
    min_reference_rows: int = MIN_REFERENCE_ROWS,
) -> Calibration:
    """Fit maps on ``rows``, choose thresholds for ``objective`` on the same rows (certified by
    Learn-then-Test unless the objective is a target cost), drop tiers that can never answer,
    then record each remaining tier's drift reference under those maps and thresholds."""
    if not rows:
        raise UserError("no rows to calibrate on (check --split / --benchmark)")
    maps = fit_calibrations(spec, rows, max_points=max_points)
    fitted = with_confidence(spec, calibrations=maps)
    base = capable_baseline(rows)
    cert: Certificate | None = None
    results: list[Evaluation] = []
    if objective.certified:
        eps = objective.max_accuracy_drop if objective.max_accuracy_drop is not None else DEFAULT_DROP
        try:
            cert = certify(cert_rows(rows), eps, objective.delta, data_hash=data_hash(rows))
        except CertificationError as err:
            raise UserError(str(err)) from None
        final = fitted if cert.chosen is None else certified_spec(fitted, cert.chosen.raw_threshold)
    else:
        results = search(fitted, rows, base, objective, progress=progress)
        final = with_confidence(fitted, thresholds=choose(results, base, objective).thresholds)
    kept_spec, keep = (None, []) if cert is not None and cert.chosen is None else drop_silent_tiers(final)
    dropped = [final.tiers[i].name for i in range(len(final.tiers)) if i not in keep]
    warnings: list[str] = []
    if kept_spec is None:
        kept = [len(spec.tiers) - 1]
        chosen = Evaluation(
            thresholds=(final.tiers[-1].confidence.threshold,),
            accuracy=base.accuracy,
            cost=base.cost,
            shares=(1.0,),
        )
        out_spec = final
        refs_rows = project(rows, kept)
        reached: list[int] | None = None
    else:
        kept = keep
        refs_rows = project(rows, kept)
        chosen = evaluate(kept_spec, refs_rows)
        refs, reached = fit_references(kept_spec, refs_rows, min_rows=min_reference_rows)
        out_spec = with_confidence(kept_spec, references=refs)
        for name, share in zip((t.name for t in kept_spec.tiers[:-1]), chosen.shares, strict=False):
            if share == 0.0:
                warnings.append(
                    f"warning: tier {name} answered none of the {len(rows)} rows at this threshold: it is "
                    "called and paid for on every query that reaches it"
                )
        if chosen.cost > base.cost:
            warnings.append(
                f"warning: this policy costs {chosen.cost / base.cost - 1:.1%} more than the capable tier "
                "alone on the rows it was fitted on (negative savings)"
            )
    b_raw: list[float | None] = []
    b_cal: list[float | None] = []
    tiers = out_spec.tiers if kept_spec is not None else [final.tiers[i] for i in kept]
    for tier, i in zip(tiers, kept, strict=True):
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
    return Calibration(
        out_spec,
        chosen,
        base,
        results,
        b_raw,
        b_cal,
        len(rows),
        reached,
        min_reference_rows,
        certificate=cert,
        dropped=dropped if kept_spec is not None else [],
        capable_only=kept_spec is None,
        warnings=warnings,
    )


def selected_on_train(spec: CascadePolicySpec, rows: Sequence[Row], eps: float) -> CascadePolicySpec:
    """The rule calibrate used before its guarantee, kept as a contrast for ``replay``: the
    cheapest thresholds whose accuracy *on the same rows* is within ``eps`` of the capable tier's.
    Selection on the rows that judge it: no guarantee."""
    fitted = with_confidence(spec, calibrations=fit_calibrations(spec, rows))
    base = capable_baseline(rows)
    obj = SelectionObjective(max_accuracy_drop=eps)
    return with_confidence(fitted, thresholds=choose(search(fitted, rows, base, obj), base, obj).thresholds)


def needs_fit(spec: CascadeSpec) -> bool:
    """True when a tier that can accept (not the last) has no calibration map."""
    return any(not t.confidence.calibration for t in spec.tiers[:-1])
