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

Net value of a group: the inference savings against the capable tier alone
(``Σ w_i (counterfactual_i - cost_i)`` over the sampled items) minus the estimated cost of the
quality loss: estimated wrong answers * cost per wrong answer + human handoffs * cost per handoff.
An aggregate can be green while one tier is red: the page shows both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

ALL = "*"


@dataclass(frozen=True, slots=True)
class SampledItem:
    revision: str
    tier: str
    probability: float
    label: str | None  # correct | incorrect | skip | None (not yet labelled)
    savings_usd: float = 0.0  # counterfactual cost - actual cost of the request


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


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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
) -> list[Estimate]:
    """Per (revision, tier), per revision (tier ``*``) and overall (``*``, ``*``); revisions and
    tiers in first-seen order, each revision's aggregate after its tiers."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    handoffs = handoffs or {}
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
            out.append(_estimate(*key, groups[key], z, h, cost_per_wrong, cost_per_handoff))
    if len(revisions) > 1:
        out.append(
            _estimate(ALL, ALL, everything, z, sum(handoffs.values()), cost_per_wrong, cost_per_handoff)
        )
    return out
