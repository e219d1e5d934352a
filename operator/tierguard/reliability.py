"""Out-of-fold reliability of each tier's calibrated confidence: diagrams and expected
calibration error (ECE). Pure, except for the HTML helper at the end.

Each tier's map is refitted K times, each time without one fold of the rows, and applied to that
fold, so every calibrated value shown was computed by a map that never saw its row: the numbers
say how the map will do on new traffic, not how well it fits its own rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from .calibration import fit_calibration
from .confidence import CalibrationMap
from .svgplot import PALETTE, Series, scatter_chart

BINS = 10
FOLDS = 5


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    n: int
    mean_confidence: float
    accuracy: float


@dataclass(frozen=True)
class Reliability:
    tier: str
    n: int
    ece: float  # sum over bins of (bin share) x |accuracy - mean confidence|
    bins: tuple[Bin, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "n": self.n,
            "ece": self.ece,
            "bins": [b.__dict__ for b in self.bins],
        }


def reliability(tier: str, probs: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> Reliability:
    """Equal-width bins over [0, 1]; empty bins are left out."""
    if len(probs) != len(correct):
        raise ValueError("probs and correct differ in length")
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, c in zip(probs, correct, strict=True):
        groups[min(bins - 1, max(0, int(p * bins)))].append((p, c))
    out = []
    ece = 0.0
    n = len(probs)
    for i, g in enumerate(groups):
        if not g:
            continue
        conf = sum(p for p, _ in g) / len(g)
        acc = sum(c for _, c in g) / len(g)
        ece += len(g) / n * abs(acc - conf)
        out.append(Bin(i / bins, (i + 1) / bins, len(g), conf, acc))
    return Reliability(tier, n, ece, tuple(out))


def cross_fitted(
    raw: Sequence[float], correct: Sequence[bool], *, folds: int = FOLDS, seed: int = 0
) -> list[float]:
    """Each value's calibrated confidence from a map fitted without its fold."""
    idx = list(range(len(raw)))
    random.Random(seed).shuffle(idx)
    fold_of = {j: k % folds for k, j in enumerate(idx)}
    out = [0.0] * len(raw)
    for f in range(folds):
        train = [j for j in idx if fold_of[j] != f]
        held = [j for j in idx if fold_of[j] == f]
        if not held:
            continue
        points = fit_calibration([raw[j] for j in train], [correct[j] for j in train]) if train else []
        cmap = CalibrationMap(points)
        for j in held:
            out[j] = cmap(raw[j])
    return out


def oof_reliability(spec: Any, rows: Sequence[Any], *, folds: int = FOLDS) -> list[Reliability | None]:
    """Per tier of ``spec``: out-of-fold reliability on ``rows`` (None without confidences)."""
    out: list[Reliability | None] = []
    for i, tier in enumerate(spec.tiers):
        pairs = [(float(r.raw[i]), bool(r.correct[i])) for r in rows if r.raw[i] is not None]
        if len(pairs) < folds:
            out.append(None)
            continue
        probs = cross_fitted([p for p, _ in pairs], [c for _, c in pairs], folds=folds)
        out.append(reliability(tier.name, probs, [c for _, c in pairs]))
    return out


def on_rows(spec: Any, rows: Sequence[Any]) -> list[Reliability | None]:
    """Per tier: reliability of ``spec``'s own maps on ``rows`` (rows the maps were not fitted on)."""
    out: list[Reliability | None] = []
    for i, tier in enumerate(spec.tiers):
        cmap = tier.confidence.calibration_map()
        pairs = [(cmap(float(r.raw[i])), bool(r.correct[i])) for r in rows if r.raw[i] is not None]
        out.append(reliability(tier.name, [p for p, _ in pairs], [c for _, c in pairs]) if pairs else None)
    return out


def reliability_section(
    items: Sequence[Reliability | dict[str, Any] | None],
    names: Sequence[str],
    title: str = "Reliability (out-of-fold)",
    note: str = "",
) -> str:
    """HTML: a reliability diagram per tier and an ECE table."""
    rels = [
        Reliability(r["tier"], r["n"], r["ece"], tuple(Bin(**b) for b in r["bins"]))
        if isinstance(r, dict)
        else r
        for r in items
    ]
    note = note or (
        f"Each tier's calibrated confidence from maps fitted without the row's fold ({FOLDS}-fold "
        "cross-fitting)"
    )
    parts = [
        f"<h2>{escape(title)}</h2>",
        f"<p class='muted'>{escape(note)}, in {BINS} equal-width bins; on the diagonal is perfect "
        "calibration. ECE: the share-weighted mean |accuracy - confidence| over the bins.</p>",
        "<table><tr><th class='l'>tier</th><th>answers</th><th>ECE</th></tr>",
    ]
    for name, r in zip(names, rels, strict=True):
        ece = "-" if r is None else f"{r.ece * 100:.1f} points"
        parts.append(
            f"<tr><td class='l'>{escape(name)}</td><td>{0 if r is None else r.n}</td><td>{ece}</td></tr>"
        )
    parts.append("</table><div class='charts'>")
    for i, (name, r) in enumerate(zip(names, rels, strict=True)):
        if r is None:
            continue
        series = [
            Series("perfect calibration", [(0.0, 0.0), (1.0, 1.0)], "#bbb"),
            Series(
                f"{name}: accuracy per bin",
                [(b.mean_confidence, b.accuracy) for b in r.bins],
                PALETTE[i % len(PALETTE)],
                labels=[str(b.n) for b in r.bins],
            ),
        ]
        parts.append(
            scatter_chart(
                series,
                title=f"{name}: {title.split(' (')[0].lower()} (ECE {r.ece * 100:.1f} points)",
                x_label="calibrated confidence (out-of-fold)",
                y_label="accuracy",
                width=360,
                height=320,
                x_pct=True,
            )
        )
    parts.append("</div>")
    return "".join(parts)
