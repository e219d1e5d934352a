"""Certify a cascade's thresholds: Learn-then-Test with fixed-sequence testing. Pure functions.

The guarantee (docs/guarantee.md): with probability at least ``1 - delta`` over the draw of the
calibration rows, the deployed cascade's accuracy is at most ``eps`` below the capable tier's,
on traffic exchangeable with those rows. Formally, with the per-query loss
``L = 1[capable correct] - 1[cascade correct]``, ``E[L] <= eps``.

How (Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test", 2021):

1. **A path fixed before looking at the data.** Candidate policies accept a cheaper tier's
   answer when its *raw* confidence is at least ``r``, the same ``r`` for every cheaper tier,
   for ``r`` running down :data:`RAW_GRID` (from "never" to "always"). Nothing about the path
   is learnt from the rows, so the calibration maps fitted on the same rows cannot bias it: a
   monotone map only relabels raw confidences (see :func:`pin_threshold`).
2. **Valid p-values.** For each candidate, :func:`tierguard.gaptest.gap_p_value` is an exact
   p-value of ``H0: E[L] > eps`` from the counts of losses and gains on the rows.
3. **Fixed-sequence testing.** Walk the path in order and stop at the first candidate whose
   p-value exceeds ``delta``. Every candidate passed is certified simultaneously (family-wise
   error at most ``delta``, with no correction for the path's length), so picking the
   cheapest certified one afterwards keeps the guarantee.

When no candidate passes, nothing cheaper than the capable tier is certified: the capable tier
alone is the policy (:attr:`Certificate.capable_only`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .gaptest import gap_p_value

METHOD = "learn-then-test: fixed-sequence over a common raw-confidence threshold, exact trinomial p-values"
# Raw thresholds, most conservative first. Log-probabilities of a single answer token put many
# raw confidences within 1e-3 of 1, so the grid is dense there (1 - 10^(-k/4)) and coarse below.
RAW_GRID: tuple[float, ...] = tuple(
    sorted(
        {1.0}
        | {round(1.0 - 10.0 ** (-k / 4.0), 12) for k in range(1, 41)}
        | {round(i / 20.0, 2) for i in range(0, 20)},
        reverse=True,
    )
)
PIN_STEP = 1e-6  # how far below the threshold a pinned map puts raw values under it


def points(fraction: float) -> str:
    """0.01 -> '1 point', 0.025 -> '2.5 points'."""
    v = fraction * 100
    return f"{v:g} point" + ("" if v == 1 else "s")


class CertificationError(ValueError):
    """Inputs a certificate cannot be computed from (the message says why)."""


@dataclass(frozen=True)
class Row:
    """What certification needs of one query: per tier raw confidence, correctness and cost."""

    raw: tuple[float | None, ...]
    correct: tuple[bool, ...]
    cost: tuple[float, ...]


@dataclass(frozen=True)
class PathPoint:
    raw_threshold: float
    losses: int  # rows where the cascade is wrong and the capable tier right
    gains: int  # the reverse
    p_value: float
    savings: float  # 1 - cascade cost / capable cost on the rows
    shares: tuple[float, ...]  # fraction answered by each tier


@dataclass
class Certificate:
    eps: float
    delta: float
    n: int
    data_hash: str
    path: list[PathPoint] = field(default_factory=list)  # tested points, in order
    certified: int = 0  # how many of them passed
    chosen: PathPoint | None = None  # the cheapest certified point; None: capable tier alone

    @property
    def capable_only(self) -> bool:
        return self.chosen is None

    def statement(self) -> str:
        """The guarantee in one sentence."""
        if self.chosen is None:
            if self.certified:
                return (
                    f"No cheaper tier could be certified to save anything: the {self.certified} thresholds "
                    f"certified on {self.n} rows (accuracy within {points(self.eps)} of the capable tier, "
                    f"confidence {1 - self.delta:.0%}) accept too little to pay for the cheaper calls; "
                    "serve the capable tier alone."
                )
            return (
                f"No cheaper tier could be certified: on {self.n} rows no threshold keeps accuracy within "
                f"{points(self.eps)} of the capable tier with confidence {1 - self.delta:.0%}; "
                "serve the capable tier alone."
            )
        return (
            f"With probability at least {1 - self.delta:.0%} over the {self.n} calibration rows, "
            f"this cascade's accuracy is at most {points(self.eps)} below the capable tier's "
            "on traffic exchangeable with those rows (Learn-then-Test, exact p-values)."
        )

    def record(self) -> dict[str, Any]:
        """What is written with the fitted policy (the ``tierguard.io/guarantee`` annotation)."""
        out: dict[str, Any] = {
            "quantity": "capable accuracy - cascade accuracy",
            "method": METHOD,
            "eps": self.eps,
            "delta": self.delta,
            "n": self.n,
            "dataSha256": self.data_hash,
            "assumption": "traffic exchangeable with the calibration rows",
            "certified": not self.capable_only,
            "statement": self.statement(),
        }
        if self.chosen is not None:
            out["rawThreshold"] = self.chosen.raw_threshold
            out["pValue"] = round(self.chosen.p_value, 6)
            out["trainSavings"] = round(self.chosen.savings, 4)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            **self.record(),
            "path": [asdict(p) for p in self.path],
            "pathCertified": self.certified,
        }


def rows_digest(rows: Sequence[Row], keys: Sequence[str] = ()) -> str:
    """SHA-256 of what the certificate was computed from (row keys, raw, correct, cost)."""
    h = hashlib.sha256()
    for i, r in enumerate(rows):
        key = keys[i] if i < len(keys) else str(i)
        h.update(repr((key, r.raw, r.correct, r.cost)).encode())
    return h.hexdigest()


def answering_tier(raw: Sequence[float | None], threshold: float) -> int:
    """The tier that answers under a common raw threshold (the last one if none accepts)."""
    for i, x in enumerate(raw[:-1]):
        if x is not None and x >= threshold:
            return i
    return len(raw) - 1


def score(rows: Sequence[Row], threshold: float) -> tuple[int, int, float, tuple[float, ...]]:
    """(losses, gains, savings, shares) of the common raw threshold on ``rows``."""
    n_tiers = len(rows[0].correct)
    losses = gains = 0
    cost = capable = 0.0
    answered = [0] * n_tiers
    for r in rows:
        k = answering_tier(r.raw, threshold)
        answered[k] += 1
        d = int(r.correct[-1]) - int(r.correct[k])
        losses += d == 1
        gains += d == -1
        cost += sum(r.cost[: k + 1])
        capable += r.cost[-1]
    savings = 1.0 - cost / capable if capable > 0 else 0.0
    return losses, gains, savings, tuple(a / len(rows) for a in answered)


def certify(
    rows: Sequence[Row], eps: float, delta: float, *, data_hash: str = "", grid: Sequence[float] = RAW_GRID
) -> Certificate:
    """Fixed-sequence test along ``grid``; the cheapest certified point is chosen (None when
    none passes, or when every certified point costs at least as much as the capable tier)."""
    if not rows:
        raise CertificationError("no rows to certify on")
    if not 0.0 <= eps < 1.0:
        raise CertificationError(f"eps must lie in [0, 1), got {eps}")
    if not 0.0 < delta < 1.0:
        raise CertificationError(f"delta must lie in (0, 1), got {delta}")
    widths = {len(r.correct) for r in rows} | {len(r.raw) for r in rows} | {len(r.cost) for r in rows}
    if len(widths) != 1 or widths.pop() < 2:
        raise CertificationError("every row needs the same number (>= 2) of tiers")
    cert = Certificate(eps, delta, len(rows), data_hash or rows_digest(rows))
    for t in grid:
        losses, gains, savings, shares = score(rows, t)
        p = gap_p_value(losses, gains, len(rows), eps)
        cert.path.append(PathPoint(t, losses, gains, p, savings, shares))
        if p > delta:
            break
        cert.certified += 1
    passed = cert.path[: cert.certified]
    best = max(passed, key=lambda p: p.savings, default=None)
    cert.chosen = best if best is not None and best.savings > 0 else None
    return cert


def pin_threshold(
    points: Sequence[tuple[float, float]], raw_threshold: float
) -> tuple[list[tuple[float, float]], float]:
    """A calibration map and a calibrated threshold that accept exactly ``raw >= raw_threshold``.

    A fitted map is a monotone step function, so "calibrated >= t" alone cannot express every
    raw threshold. Raw values below the threshold are capped :data:`PIN_STEP` below the map's
    value at it, and a point is added at the threshold itself; calibrated values move by at most
    :data:`PIN_STEP` except where the map was flat across the threshold.
    """
    from .confidence import CalibrationMap

    cmap = CalibrationMap(points)
    level = min(1.0, max(cmap(raw_threshold), PIN_STEP))
    below = [(x, min(y, level - PIN_STEP)) for x, y in points if x < raw_threshold]
    above = [(x, max(y, level)) for x, y in points if x > raw_threshold]
    if not below and raw_threshold > 0.0:
        below = [(0.0, max(0.0, min(cmap(0.0), level - PIN_STEP)))]
    return [*below, (raw_threshold, level), *above], level
