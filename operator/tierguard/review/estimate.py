"""Inclusion-weighted (Horvitz-Thompson) quality estimates from the labelled review sample.

Each labelled item ``i`` was sampled with probability ``p_i`` and so stands for ``w_i = 1/p_i``
answers. Per group (a tier of a revision, a revision, everything):

- accuracy: the Hájek ratio ``Σ w_i y_i / Σ w_i`` (``y_i`` = 1 for *correct*); skipped items are
  left out (they are non-response, not errors);
- its interval: Wilson's score interval at the Kish effective sample size
  ``n_eff = (Σ w)² / Σ w²``, which stays inside [0, 1] and does not collapse to a point when every
  label agrees;
- ``answers``: the estimated number of answers the group gave while sampling ran (``Σ 1/p`` over
  every sampled item, labelled or not).

**Model-assisted (difference) estimate**, when the proxy counted every answer of the group and
summed its calibrated confidences ``c`` (:class:`Population`, from the store's hourly stratum
counts):

    accuracy_diff = C̄ + Σ w_i (y_i - c_i) / Σ w_i,    C̄ = Σ_all c / N (every answer, not only sampled)

The first term is known exactly; only the mean residual ``y - c`` is estimated from the sample. It
is design-consistent whatever the calibration (a wrong calibration only makes the residuals larger),
and its variance is that of the residuals, much smaller than that of ``y`` when the confidence is
informative. Variance under Poisson sampling (each answer drawn independently with its ``p``),
linearised Hájek: ``n/(n-1) Σ (1 - p_i) w_i² (r_i - r̄)² / (Σ w_i)²``, but at least the variance
the calibration predicts (``c_i (1 - c_i)`` in place of the squared residual), so that a small
sample whose labels all agree does not collapse the interval; the interval uses Student's t at
``n_eff - 1`` degrees of freedom and is clipped to [0, 1].

Net value of a group: the inference savings against the capable tier alone
(``Σ w_i (counterfactual_i - cost_i)`` over the sampled items) minus the estimated cost of the
quality loss: estimated wrong answers * cost per wrong answer + human handoffs * cost per handoff.
An aggregate can be green while one tier is red: the page shows both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from statistics import NormalDist

ALL = "*"


@dataclass(frozen=True, slots=True)
class SampledItem:
    revision: str
    tier: str
    probability: float
    label: str | None  # correct | incorrect | skip | None (not yet labelled)
    savings_usd: float = 0.0  # counterfactual cost - actual cost of the request
    confidence: float | None = None  # calibrated confidence of the answer (for the difference estimate)


@dataclass(frozen=True, slots=True)
class Population:
    """Every answer of a group while sampling ran: how many had a calibrated confidence, their sum."""

    answers: int
    confidence_sum: float


@dataclass(frozen=True, slots=True)
class Difference:
    """The model-assisted estimate of a group's accuracy (see the module's docstring)."""

    accuracy: float
    lo: float
    hi: float
    se: float
    mean_confidence: float  # over every answer of the group
    mean_residual: float  # inclusion-weighted mean of label - confidence over the labelled sample
    labels: int
    answers: int


@dataclass(frozen=True, slots=True)
class Estimate:
    revision: str
    tier: str
    labels: int  # correct + incorrect labels
    correct: int
    answers: float  # estimated answers in the group (Σ 1/p over sampled items)
    accuracy: float | None
    lo: float | None
    hi: float | None
    n_eff: float
    savings_usd: float
    handoffs: int = 0
    net_value_usd: float | None = None
    difference: Difference | None = None


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (Cornish-Fisher expansion around the normal; exact enough for df >= 2)."""
    z = NormalDist().inv_cdf(q)
    if df <= 0 or math.isinf(df):
        return z
    df = max(df, 1.0)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def difference_estimate(
    items: Iterable[SampledItem], population: Population, confidence: float = 0.95
) -> Difference | None:
    """The difference estimator of a group's accuracy; None without answers or labelled items
    that carry a confidence."""
    if population.answers <= 0:
        return None
    rows = [
        (
            1.0 / it.probability,
            it.probability,
            (1.0 if it.label == "correct" else 0.0) - it.confidence,
            it.confidence,
        )
        for it in items
        if it.label in ("correct", "incorrect") and it.confidence is not None and it.probability > 0
    ]
    if not rows:
        return None
    w_sum = sum(w for w, _p, _r, _c in rows)
    w2_sum = sum(w * w for w, _p, _r, _c in rows)
    r_bar = sum(w * r for w, _p, r, _c in rows) / w_sum
    n = len(rows)
    design = sum((1.0 - p) * w * w * (r - r_bar) ** 2 for w, p, r, _c in rows) / (w_sum * w_sum)
    design *= n / (n - 1) if n > 1 else 1.0  # the residuals' mean is estimated too
    # what the calibration itself predicts, E[(y - c)^2] = c (1 - c): a floor, so that a small
    # sample whose labels all agree does not make the interval collapse (as Wald's does)
    model = sum((1.0 - p) * w * w * c * (1.0 - c) for w, p, _r, c in rows) / (w_sum * w_sum)
    var = max(design, model)
    c_bar = population.confidence_sum / population.answers
    n_eff = w_sum * w_sum / w2_sum
    return _difference(c_bar, r_bar, math.sqrt(max(var, 0.0)), n_eff - 1, n, population.answers, confidence)


def _difference(
    c_bar: float, r_bar: float, se: float, df: float, labels: int, answers: int, confidence: float
) -> Difference:
    acc = c_bar + r_bar
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Difference(
        min(1.0, max(0.0, acc)),
        max(0.0, acc - half),
        min(1.0, acc + half),
        se,
        c_bar,
        r_bar,
        labels,
        answers,
    )


def combine_differences(parts: list[tuple[Difference, float]], confidence: float) -> Difference | None:
    """The aggregate of independent groups' difference estimates, weighted by their answers."""
    if not parts:
        return None
    n = sum(d.answers for d, _ in parts)
    if n <= 0:
        return None
    c_bar = sum(d.answers * d.mean_confidence for d, _ in parts) / n
    r_bar = sum(d.answers * d.mean_residual for d, _ in parts) / n
    se = math.sqrt(sum((d.answers / n) ** 2 * d.se**2 for d, _ in parts))
    df = sum(df for _, df in parts)
    return _difference(c_bar, r_bar, se, df, sum(d.labels for d, _ in parts), n, confidence)


def _estimate(
    revision: str,
    tier: str,
    items: list[SampledItem],
    z: float,
    handoffs: int,
    cost_wrong: float,
    cost_handoff: float,
) -> Estimate:
    w_sum = w2_sum = wy_sum = 0.0
    labels = correct = 0
    answers = savings = 0.0
    for it in items:
        w = 1.0 / it.probability if it.probability > 0 else 0.0
        answers += w
        savings += w * it.savings_usd
        if it.label not in ("correct", "incorrect"):
            continue
        labels += 1
        y = 1.0 if it.label == "correct" else 0.0
        correct += int(y)
        w_sum += w
        w2_sum += w * w
        wy_sum += w * y
    if labels == 0 or w_sum <= 0:
        return Estimate(revision, tier, 0, 0, answers, None, None, None, 0.0, savings, handoffs, None)
    acc = wy_sum / w_sum
    n_eff = w_sum * w_sum / w2_sum
    lo, hi = wilson(acc, n_eff, z)
    net = savings - answers * (1 - acc) * cost_wrong - handoffs * cost_handoff
    return Estimate(revision, tier, labels, correct, answers, acc, lo, hi, n_eff, savings, handoffs, net)


def estimates(
    items: Iterable[SampledItem],
    *,
    confidence: float = 0.95,
    handoffs: dict[tuple[str, str], int] | None = None,
    cost_per_wrong: float = 0.0,
    cost_per_handoff: float = 0.0,
    populations: dict[tuple[str, str], Population] | None = None,
) -> list[Estimate]:
    """Per (revision, tier), per revision (tier ``*``) and overall (``*``, ``*``); revisions and
    tiers in first-seen order, each revision's aggregate after its tiers. With ``populations``
    (per (revision, tier)), each tier that has one also gets the difference estimate, and an
    aggregate gets it when every one of its tiers has it."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    handoffs = handoffs or {}
    populations = populations or {}
    groups: dict[tuple[str, str], list[SampledItem]] = {}
    everything: list[SampledItem] = []
    for it in items:
        groups.setdefault((it.revision, it.tier), []).append(it)
        groups.setdefault((it.revision, ALL), []).append(it)
        everything.append(it)
    out: list[Estimate] = []
    revisions = list(dict.fromkeys(r for r, _ in groups))
    for rev in revisions:
        keys = [k for k in groups if k[0] == rev and k[1] != ALL] + [(rev, ALL)]
        for key in keys:
            h = (
                sum(v for (r, _t), v in handoffs.items() if r == rev)
                if key[1] == ALL
                else handoffs.get(key, 0)
            )
            e = _estimate(*key, groups[key], z, h, cost_per_wrong, cost_per_handoff)
            if key[1] != ALL and key in populations:
                e = replace(e, difference=difference_estimate(groups[key], populations[key], confidence))
            elif key[1] == ALL:
                e = replace(e, difference=_aggregate([x for x in out if x.revision == rev], confidence))
            out.append(e)
    if len(revisions) > 1:
        e = _estimate(ALL, ALL, everything, z, sum(handoffs.values()), cost_per_wrong, cost_per_handoff)
        out.append(replace(e, difference=_aggregate([x for x in out if x.tier != ALL], confidence)))
    return out


def _aggregate(tiers: list[Estimate], confidence: float) -> Difference | None:
    if not tiers or any(t.difference is None for t in tiers):
        return None
    return combine_differences(
        [(t.difference, max(t.n_eff - 1, 1.0)) for t in tiers if t.difference is not None], confidence
    )
