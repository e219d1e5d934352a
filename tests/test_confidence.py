import math
import random

import pytest

from tierguard.confidence import CalibrationMap, aggregate, best_case, confidence_bucket, quantile


def lp(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def test_single_token_all_methods_agree():
    for method in ("min", "mean", "quantile"):
        assert aggregate(lp(0.7), method) == pytest.approx(0.7)  # type: ignore[arg-type]


def test_min_is_least_likely_token():
    assert aggregate(lp(0.9, 0.2, 0.95), "min") == pytest.approx(0.2)


def test_mean_is_length_biased_quantile_is_not():
    # one doubtful token among many certain ones: the mean rises with length, a low quantile does not
    short = lp(0.3, 0.99, 0.99)
    long = lp(0.3, *([0.99] * 40))
    assert aggregate(long, "mean") > aggregate(short, "mean")
    doubtful = lp(0.3, 0.3, 0.3, 0.3, 0.3, *([0.99] * 20))
    assert aggregate(doubtful, "quantile", 0.1) == pytest.approx(0.3)
    assert aggregate(doubtful, "mean") > 0.8


def test_quantile_matches_linear_interpolation():
    values = sorted([0.1, 0.4, 0.5, 0.9])
    assert quantile(values, 0.0) == 0.1
    assert quantile(values, 1.0) == 0.9
    assert quantile(values, 0.5) == pytest.approx(0.45)


def test_empty_answer_has_zero_confidence():
    assert aggregate([], "quantile") == 0.0


def test_positive_rounding_is_clamped():
    assert aggregate([1e-7], "min") == 1.0


@pytest.mark.parametrize("method", ["min", "mean", "quantile"])
def test_best_case_bounds_every_continuation(method):
    rng = random.Random(7)
    for _ in range(200):
        seen = [math.log(rng.uniform(0.01, 1.0)) for _ in range(rng.randint(1, 8))]
        max_tokens = len(seen) + rng.randint(0, 8)
        bound = best_case(seen, max_tokens, method, 0.2)
        future = [math.log(rng.uniform(0.01, 1.0)) for _ in range(rng.randint(0, max_tokens - len(seen)))]
        assert aggregate(seen + future, method, 0.2) <= bound + 1e-12


def test_best_case_is_tight_for_certain_continuation():
    seen = lp(0.5, 0.9)
    assert best_case(seen, 10, "quantile", 0.1) == pytest.approx(aggregate(seen + [0.0] * 8, "quantile", 0.1))


def test_calibration_interpolates_and_clamps():
    cal = CalibrationMap([(0.2, 0.1), (0.6, 0.5), (1.0, 0.9)])
    assert cal(0.0) == 0.1
    assert cal(1.0) == 0.9
    assert cal(0.4) == pytest.approx(0.3)
    assert cal(0.8) == pytest.approx(0.7)


def test_calibration_is_monotone():
    cal = CalibrationMap([(0.0, 0.0), (0.3, 0.2), (0.31, 0.6), (1.0, 0.95)])
    xs = [i / 1000 for i in range(1001)]
    ys = [cal(x) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:]))


@pytest.mark.parametrize(
    "points",
    [[(0.5, 0.5), (0.4, 0.6)], [(0.1, 0.5), (0.4, 0.4)], [(0.1, 1.5)], [(0.2, 0.2), (0.2, 0.3)]],
)
def test_calibration_rejects_bad_points(points):
    with pytest.raises(ValueError):
        CalibrationMap(points)


def test_identity_without_points():
    assert CalibrationMap()(0.42) == 0.42


def test_buckets():
    assert confidence_bucket(0.0) == 0
    assert confidence_bucket(0.95) == 9
    assert confidence_bucket(1.0) == 9
