"""``tierguard calibrate``: fit each tier's calibration map and choose thresholds on recorded outcomes.

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

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cascade import route
from .cli import UserError
from .drift import reference_fractions
from .guarantee import Certificate, CertificationError, certify, pin_threshold, points, rows_digest
from .guarantee import Row as CertRow
from .policy import CascadePolicySpec, CascadeSpec, PolicyError, parse_policy_spec
from .replay.data import Row, load_dataset, warn_skipped

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


# --- the command -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="recorded outcomes (JSONL, docs/outcomes-format.md)")
    parser.add_argument("--policy", required=True, help="CascadePolicy YAML (manifest or bare spec)")
    parser.add_argument("--out", required=True, help="where to write the calibrated policy YAML")
    parser.add_argument("--split", default="train", help="rows of this split only ('all' for every row)")
    parser.add_argument(
        "--benchmark", action="append", default=None, help="rows of this benchmark only (repeatable)"
    )
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="certify accuracy >= capable tier's minus this, as a fraction "
        f"(default {DEFAULT_DROP}; docs/guarantee.md)",
    )
    goal.add_argument(
        "--target-cost",
        type=float,
        default=None,
        help="maximise accuracy at cost <= this x capable tier's (no guarantee)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help=f"the guarantee may fail with probability at most this (default {DEFAULT_DELTA})",
    )
    parser.add_argument("--max-points", type=int, default=MAX_POINTS, help="calibration points per tier")
    parser.add_argument(
        "--min-reference-rows",
        type=int,
        default=MIN_REFERENCE_ROWS,
        help="rows that must reach a tier for its drift reference to be written "
        f"(default {MIN_REFERENCE_ROWS}; docs/drift.md)",
    )
    parser.add_argument("--report", default=None, help="also write an HTML report (reliability diagrams)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")


def _load_raw_policy(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise PolicyError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not valid YAML: {err}") from None


def write_policy(
    source_path: str,
    spec: CascadeSpec,
    out: str,
    header: str,
    annotations: dict[str, str] | None = None,
) -> None:
    """Write ``source_path``'s policy with its tiers replaced by ``spec``'s (same names; tiers
    ``spec`` lacks are left out) and each tier's confidence by ``spec``'s. ``annotations`` go to
    ``metadata.annotations`` of a manifest (a bare spec has nowhere to keep them: the header
    comment carries the same text)."""
    data = _load_raw_policy(source_path)
    manifest = isinstance(data, dict) and data.get("kind") == "CascadePolicy"
    body = data.get("spec") if manifest else data
    if not isinstance(body, dict) or not isinstance(body.get("tiers"), list):
        raise PolicyError(f"{source_path}: no tiers list")
    by_name = {t.name: t for t in spec.tiers}
    tiers = [t for t in body["tiers"] if isinstance(t, dict) and t.get("name") in by_name]
    if len(tiers) != len(spec.tiers):
        raise PolicyError(f"{source_path}: tiers do not match the calibrated policy")
    for raw_tier in tiers:
        raw_tier["confidence"] = by_name[raw_tier["name"]].confidence.to_yaml_dict()
    body["tiers"] = tiers
    if manifest and annotations:
        meta = data.setdefault("metadata", {}) or {}
        data["metadata"] = meta
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    parse_policy_spec(body, out)  # what we write must load
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        Path(out).write_text(comment + text)
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror}") from None


def guarantee_lines(cal: Calibration) -> list[str]:
    cert = cal.certificate
    if cert is None:
        return ["guarantee: none (--target-cost chooses on the rows it reports; use --max-accuracy-drop)"]
    lines = [f"guarantee: {cert.statement()}"]
    tested = cert.path
    if tested:
        last = tested[-1]
        stop = (
            f"stopped at raw threshold {last.raw_threshold:.12g} (p = {last.p_value:.3f} > {cert.delta:g}; "
            f"{last.losses} losses, {last.gains} gains)"
            if cert.certified < len(tested)
            else "every threshold on the path certified"
        )
        lines.append(f"  path: {cert.certified} of {len(tested)} tested thresholds certified; {stop}")
    if cert.chosen is not None:
        c = cert.chosen
        lines.append(
            f"  chosen: raw threshold {c.raw_threshold:.12g} for every cheaper tier, p = {c.p_value:.4f}, "
            f"{c.losses} losses and {c.gains} gains vs the capable tier on {cert.n} rows"
        )
    lines.append(f"  data: sha256 {cert.data_hash[:16]}..., assumption: traffic exchangeable with these rows")
    return lines


def summary_lines(cal: Calibration, names: Sequence[str], models: Sequence[str]) -> list[str]:
    ev, base = cal.chosen, cal.baseline
    lines = [f"rows: {cal.n_rows}", ""]
    if cal.capable_only:
        lines += [
            f"capable tier alone: accuracy {base.accuracy:.4f}, cost ${base.cost:.3e}/query",
            f"proposal: capable-only ({NEVER_ACCEPTS})",
            *guarantee_lines(cal),
        ]
        return lines
    by_name = dict(zip(names, models, strict=True))
    lines.append(
        f"{'tier':<14}{'model':<22}{'points':>7}{'threshold':>11}{'share':>8}{'brier raw':>11}{'cal':>8}"
    )
    for i, tier in enumerate(cal.spec.tiers):
        pts = len(tier.confidence.calibration or [])
        thr = "-" if i == len(cal.spec.tiers) - 1 else f"{tier.confidence.threshold:.4f}"
        br = cal.brier_raw[i]
        bc = cal.brier_calibrated[i]
        lines.append(
            f"{tier.name:<14}{by_name.get(tier.name, tier.model):<22}{pts:>7}{thr:>11}{ev.shares[i]:>8.1%}"
            f"{'-' if br is None else f'{br:.4f}':>11}{'-' if bc is None else f'{bc:.4f}':>8}"
        )
    lines += [
        "",
        f"capable tier alone: accuracy {base.accuracy:.4f}, cost ${base.cost:.3e}/query",
        f"cascade:            accuracy {ev.accuracy:.4f}, cost ${ev.cost:.3e}/query, "
        f"savings {cal.savings:.1%} (on the rows fitted on)",
    ]
    if cal.results:
        lines.append(f"({len(cal.results)} threshold combinations routed)")
    for name in cal.dropped:
        lines.append(
            f"dropped tier {name}: its threshold can never be reached (it would be paid for, never answer)"
        )
    lines += guarantee_lines(cal)
    if cal.reference_rows is not None:
        parts = []
        for i, tier in enumerate(cal.spec.tiers):
            n = cal.reference_rows[i]
            if tier.confidence.reference is not None:
                parts.append(f"{tier.name} ({n} rows)")
            else:
                parts.append(f"{tier.name} none (only {n} rows reach it, need {cal.min_reference_rows})")
        lines.append("drift references (tierguard_confidence_psi): " + ", ".join(parts))
    lines += cal.warnings
    return lines


def objective_from_args(args: argparse.Namespace) -> SelectionObjective:
    """The objective the arguments ask for; bad values are :class:`UserError`."""
    if args.max_accuracy_drop is not None and not 0.0 <= args.max_accuracy_drop < 1.0:
        raise UserError("--max-accuracy-drop must lie in [0, 1) (a fraction: 0.01 is one point)")
    if args.target_cost is not None and args.target_cost <= 0:
        raise UserError("--target-cost must be positive")
    if not 0.0 < args.delta < 1.0:
        raise UserError("--delta must lie in (0, 1)")
    return SelectionObjective(
        max_accuracy_drop=None
        if args.target_cost is not None
        else (DEFAULT_DROP if args.max_accuracy_drop is None else args.max_accuracy_drop),
        target_cost=args.target_cost,
        delta=args.delta,
    )


def run(args: argparse.Namespace) -> int:
    from .nodata import explain_no_rows
    from .policy import load_policy_spec

    _, spec = load_policy_spec(args.policy)
    if args.max_points < 2:
        raise UserError("--max-points must be at least 2")
    if args.min_reference_rows < 1:
        raise UserError("--min-reference-rows must be at least 1")
    objective = objective_from_args(args)
    ds = load_dataset(args.data, spec, strict=args.strict, benchmarks=args.benchmark)
    warn_skipped(ds, "tierguard calibrate")
    rows = ds.rows if args.split == "all" else ds.select(split=args.split)
    if not rows:
        raise UserError(explain_no_rows(args.data, spec, benchmarks=args.benchmark, split=args.split))
    cal = calibrate(
        spec,
        rows,
        objective,
        max_points=args.max_points,
        progress=sys.stderr.isatty(),
        min_reference_rows=args.min_reference_rows,
    )
    print(f"objective: {objective.describe()}")
    for line in summary_lines(cal, ds.tiers, ds.models):
        print(line)
    if args.report:
        from .calibrate_report import write_report

        write_report(args.report, cal, spec, rows)
        print(f"wrote {args.report}")
    if cal.capable_only:
        print(
            f"tierguard calibrate: nothing written to {args.out}: serve the capable tier alone",
            file=sys.stderr,
        )
        return 3
    header = (
        f"Calibrated by `tierguard calibrate` on {Path(args.data).name}, split {args.split}"
        + (f", benchmark {','.join(args.benchmark)}" if args.benchmark else "")
        + f" ({cal.n_rows} rows).\nObjective: {objective.describe()}."
    )
    annotations = None
    if cal.certificate is not None:
        header += f"\nGuarantee: {cal.certificate.statement()}"
        annotations = {GUARANTEE_ANNOTATION: json.dumps(cal.certificate.record(), sort_keys=True)}
    write_policy(args.policy, cal.spec, args.out, header, annotations)
    print(f"wrote {args.out}")
    return 0
