"""The model-assisted (difference) accuracy estimate: unbiased whatever the calibration, narrower than
the Hájek ratio when the confidence is informative, and its interval covers over repeated samples."""

from __future__ import annotations

import random
import statistics

import pytest

from tierguard.policy import ReviewSpec
from tierguard.review.estimate import (
    ALL,
    Population,
    SampledItem,
    difference_estimate,
    estimates,
    t_quantile,
)
from tierguard.review.quality import populations
from tierguard.review.sampling import Sampler
from tierguard.review.store import StratumRow


def _population(rng: random.Random, n: int, bias: float) -> list[tuple[float, bool]]:
    """(calibrated confidence, correct) per answer; the truth is ``confidence - bias``: a
    calibration that is off by ``bias`` everywhere (0: calibrated). Confidences are informative:
    most answers are sure (0.9-1), the rest are doubtful (0.1-0.6)."""
    out = []
    for _ in range(n):
        c = 0.9 + 0.1 * rng.random() if rng.random() < 0.6 else 0.1 + 0.5 * rng.random()
        out.append((c, rng.random() < max(0.0, c - bias)))
    return out


def _run(rng: random.Random, answers: list[tuple[float, bool]], rate: float):
    """One stream through the proxy's sampler (default bands and weights, no novelty)."""
    sampler = Sampler(
        ReviewSpec(rate=rate, novelty_boost=1.0, quota_per_hour=1_000_000), random.Random(rng.random())
    )
    items = []
    for i, (c, y) in enumerate(answers):
        d = sampler.draw("r", "cheap", c, 0.0, float(i))
        if d.sampled:
            items.append(SampledItem("r", "cheap", d.probability, "correct" if y else "incorrect", 0.0, c))
    counts = sampler.drain_counts()
    pop = Population(sum(k.confidence_n for k in counts), sum(k.confidence_sum for k in counts))
    return items, pop


@pytest.mark.slow
@pytest.mark.parametrize("bias", [0.0, 0.08])
def test_difference_estimate_is_unbiased_narrower_and_covers(bias):
    rng = random.Random(3 + int(bias * 100))
    runs, covered, diff_err, hajek_err, widths = 300, 0, [], [], []
    for _ in range(runs):
        answers = _population(rng, 3000, bias)
        truth = sum(y for _, y in answers) / len(answers)
        items, pop = _run(rng, answers, 0.01)
        assert pop.answers == len(answers)
        e = estimates(items, populations={("r", "cheap"): pop})[0]
        d = e.difference
        assert d is not None and e.accuracy is not None
        covered += d.lo <= truth <= d.hi
        diff_err.append(d.accuracy + 0.0 - truth)
        hajek_err.append(e.accuracy - truth)
        widths.append((d.hi - d.lo, e.hi - e.lo))
    # unbiased: the mean error is within a few standard errors of 0, whatever the calibration
    se = statistics.stdev(diff_err) / runs**0.5
    assert abs(statistics.mean(diff_err)) < 4 * se
    # narrower and more accurate than the Hájek ratio on the same labels
    assert statistics.median(abs(x) for x in diff_err) < 0.85 * statistics.median(abs(x) for x in hajek_err)
    assert statistics.median(w for w, _ in widths) < statistics.median(h for _, h in widths)
    assert covered / runs >= 0.92  # a 95% interval, 300 runs: 0.92 is > 2 standard errors below


def test_difference_estimate_edge_cases():
    pop = Population(100, 80.0)
    assert difference_estimate([], pop) is None
    assert difference_estimate([SampledItem("r", "t", 0.5, "correct", 0.0, 0.9)], Population(0, 0.0)) is None
    # unlabelled, skipped and confidence-less items are not residuals
    only = [
        SampledItem("r", "t", 0.5, None, 0.0, 0.9),
        SampledItem("r", "t", 0.5, "skip", 0.0, 0.9),
        SampledItem("r", "t", 0.5, "correct", 0.0, None),
    ]
    assert difference_estimate(only, pop) is None
    # mean confidence 0.8; residuals +0.1 and -0.9 weighted 1:1 -> 0.8 - 0.4 = 0.4
    d = difference_estimate(
        [SampledItem("r", "t", 0.5, "correct", 0.0, 0.9), SampledItem("r", "t", 0.5, "incorrect", 0.0, 0.9)],
        pop,
    )
    assert d is not None
    assert d.accuracy == pytest.approx(0.4) and d.mean_confidence == pytest.approx(0.8)
    assert 0.0 <= d.lo <= d.accuracy <= d.hi <= 1.0
    # drawn with certainty: no sampling variance
    d1 = difference_estimate([SampledItem("r", "t", 1.0, "correct", 0.0, 0.9)], pop)
    assert d1 is not None and d1.se == 0.0


def test_t_quantile_matches_tables():
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=0.02)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=0.005)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.960, abs=0.001)


def test_aggregate_combines_tiers_only_when_every_tier_has_one():
    rng = random.Random(5)
    items = []
    for tier, p_true in (("cheap", 0.9), ("capable", 0.7)):
        for _ in range(200):
            items.append(
                SampledItem("r", tier, 0.1, "correct" if rng.random() < p_true else "incorrect", 0.0, 0.8)
            )
    pops = {("r", "cheap"): Population(3000, 2700.0), ("r", "capable"): Population(1000, 700.0)}
    est = {e.tier: e for e in estimates(items, populations=pops)}
    agg = est[ALL].difference
    assert agg is not None and agg.answers == 4000
    expected = (3000 * est["cheap"].difference.accuracy + 1000 * est["capable"].difference.accuracy) / 4000
    assert agg.accuracy == pytest.approx(expected)
    assert agg.lo < agg.accuracy < agg.hi
    partial = {e.tier: e for e in estimates(items, populations={("r", "cheap"): pops[("r", "cheap")]})}
    assert partial["cheap"].difference is not None
    assert partial["capable"].difference is None and partial[ALL].difference is None


def test_populations_from_stratum_counts_skip_tiers_without_complete_sums():
    rows = [
        StratumRow(1, "pol", "r", "cheap", "0-0.5", 10, 1, 3.0, 10),
        StratumRow(1, "pol", "r", "cheap", "0.95-1", 90, 1, 88.0, 90),
        # an hour written before the confidence sums existed: not the same answers as the sample
        StratumRow(0, "pol", "r", "mid", "0-0.5", 10, 1, 0.0, 0),
        StratumRow(1, "pol", "r", "mid", "0-0.5", 10, 1, 4.0, 10),
        # the last tier without a confidence
        StratumRow(1, "pol", "r", "capable", "none", 50, 2, 0.0, 0),
    ]
    pops = populations(rows)
    assert pops == {"pol": {("r", "cheap"): Population(100, 91.0)}}
