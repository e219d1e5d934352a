import math
import random

import pytest

from tierguard.drift import (
    CONFIDENCE_EDGES,
    BernoulliCUSUM,
    PSIWindow,
    histogram,
    psi,
    psi_of_samples,
    quantile_edges,
    rate_shift,
    upper_quantile,
)


def test_psi_of_identical_distributions_is_zero():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)


def test_psi_known_value():
    # fractions (0.5, 0.5) -> (0.25, 0.75)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)


def test_psi_is_symmetric_and_floors_empty_bins():
    a, b = [90, 10, 0], [10, 10, 80]
    assert psi(a, b) == pytest.approx(psi(b, a))
    assert math.isfinite(psi(a, b))
    assert psi(a, b, eps=1e-6) > psi(a, b, eps=1e-2)  # a smaller floor: a larger penalty for the empty bin


def test_psi_rejects_bad_input():
    with pytest.raises(ValueError, match="bin counts differ"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        psi([0, 0], [1, 1])


def test_histogram_bins_are_left_closed():
    edges = [0.5, 0.9]
    assert histogram([0.1, 0.5, 0.89, 0.9, 1.0], edges) == [1, 2, 2]


def test_quantile_edges_collapse_ties():
    ref = [1.0] * 60 + [0.5 + i / 100 for i in range(40)]
    edges = quantile_edges(ref, 10)
    assert edges == sorted(set(edges))
    assert all(e < 1.0 for e in edges)
    assert len(edges) < 9  # the ties at 1.0 merge the top bins
    with pytest.raises(ValueError):
        quantile_edges([], 10)


def test_psi_of_samples_detects_a_shift():
    rng = random.Random(1)
    ref = [1 - rng.random() ** 3 * 0.5 for _ in range(2000)]
    same = [1 - rng.random() ** 3 * 0.5 for _ in range(2000)]
    shifted = [1 - rng.random() * 0.5 for _ in range(2000)]
    assert psi_of_samples(ref, same) < 0.05
    assert psi_of_samples(ref, shifted) > 0.25


def test_psi_window_reports_every_step_once_full():
    ref = histogram([0.95] * 50 + [0.6] * 50, CONFIDENCE_EDGES)
    w = PSIWindow(CONFIDENCE_EDGES, ref, window=4, step=2, threshold=0.5)
    out = [w.observe(v) for v in [0.95, 0.6, 0.95, 0.6, 0.1, 0.1, 0.1, 0.1]]
    assert out[:3] == [None, None, None]
    assert out[3] == pytest.approx(0.0, abs=1e-9)  # the window matches the reference
    assert out[4] is None and out[6] is None
    last4 = histogram([0.1, 0.1, 0.1, 0.1], CONFIDENCE_EDGES)
    assert out[7] == pytest.approx(psi(ref, last4))
    assert w.fired and w.last == out[7]


def test_psi_window_validates():
    with pytest.raises(ValueError, match="reference fractions"):
        PSIWindow([0.5], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        PSIWindow([0.5], [1, 1], window=0)


def test_cusum_recursion_by_hand():
    c = BernoulliCUSUM(0.1, 0.2, threshold=1.5)
    up, down = math.log(2.0), math.log(0.8 / 0.9)
    assert not c.observe(True)
    assert c.statistic == pytest.approx(up)
    c.observe(False)
    assert c.statistic == pytest.approx(up + down)
    for _ in range(50):
        c.observe(False)
    assert c.statistic == 0.0  # never below zero
    assert c.peak == pytest.approx(up)
    fired = [c.observe(True) for _ in range(3)]
    assert fired == [False, False, True]  # 3 * ln 2 = 2.08 >= 1.5
    c.reset()
    assert not c.fired and c.statistic == 0.0


def test_cusum_validates_rates():
    with pytest.raises(ValueError):
        BernoulliCUSUM(0.2, 0.1)
    with pytest.raises(ValueError):
        BernoulliCUSUM(0.0, 0.1)


def test_rate_shift_stays_below_one():
    assert rate_shift(0.1, 0.05) == pytest.approx(0.15)
    assert 0.98 < rate_shift(0.98, 0.05) < 1.0


def test_upper_quantile():
    assert upper_quantile(list(range(101)), 0.05) == pytest.approx(95.0)
    with pytest.raises(ValueError):
        upper_quantile([], 0.05)


def test_vectorised_paths_match_the_streaming_detectors():
    np = pytest.importorskip("numpy")
    from tierguard.replay.monitors import cusum_path, psi_path, residual_cusum_path

    rng = random.Random(3)
    events = [rng.random() < 0.2 for _ in range(500)]
    c = BernoulliCUSUM(0.1, 0.15)
    stream = []
    for e in events:
        c.observe(e)
        stream.append(c.statistic)
    assert np.allclose(cusum_path(np.array(events), 0.1, 0.15), stream)

    # the residual CUSUM with one expected error rate for every answer is the plain CUSUM
    p0 = np.full(len(events), 0.1)
    assert np.allclose(residual_cusum_path(np.array(events), p0, 0.05), stream)
    # and with its own rate per answer, the streaming detector run answer by answer
    rates = [0.02 + 0.5 * rng.random() for _ in events]
    expected_stat, s = [], 0.0
    for e, r in zip(events, rates, strict=True):
        d = BernoulliCUSUM(r, rate_shift(r, 0.05))
        s = max(0.0, s + (d.up if e else d.down))
        expected_stat.append(s)
    assert np.allclose(residual_cusum_path(np.array(events), np.array(rates), 0.05), expected_stat)

    ref = histogram([rng.random() for _ in range(300)], CONFIDENCE_EDGES)
    values = [rng.random() ** 0.2 for _ in range(1000)]
    w = PSIWindow(CONFIDENCE_EDGES, ref, window=200, step=50)
    expected = [(i, v) for i, x in enumerate(values) if (v := w.observe(x)) is not None]
    idx, vals = psi_path(np.array(values), CONFIDENCE_EDGES, ref, 200, 50)
    assert list(idx) == [i for i, _ in expected]
    assert np.allclose(vals, [v for _, v in expected])


# --- the stored reference (TierConfidence.reference) ---------------------------------------------


def test_reference_fractions_are_bin_proportions_on_the_fixed_edges():
    from tierguard.drift import CONFIDENCE_BINS, check_reference, reference_fractions

    values = [0.1] * 25 + [0.75] * 50 + [1.0] * 25
    ref = reference_fractions(values)
    assert len(ref) == CONFIDENCE_BINS == len(CONFIDENCE_EDGES) + 1
    assert ref[0] == 0.25 and ref[2] == 0.5 and ref[-1] == 0.25
    check_reference(ref)
    thirds = reference_fractions([0.1, 0.6, 0.75])
    assert thirds[:3] == [0.333333] * 3  # rounded, still a valid reference
    check_reference(thirds)
    with pytest.raises(ValueError, match="empty"):
        reference_fractions([])


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ([0.5, 0.5], "needs 11 proportions"),
        ([0.2] * 11, "must sum to 1, they sum to 2.2"),
        ([-0.1, 0.2, *[0.1] * 9], "proportion 0 is -0.1"),
        ([math.nan, *[0.1] * 10], "proportion 0 is nan"),
    ],
)
def test_check_reference_says_what_is_wrong(reference, message):
    from tierguard.drift import check_reference

    with pytest.raises(ValueError, match=message):
        check_reference(reference)


def test_tier_confidence_reference_field():
    from pydantic import ValidationError

    from tierguard.drift import reference_fractions
    from tierguard.policy import TierConfidence

    ref = reference_fractions([0.3, 0.6, 0.85, 0.97])
    tc = TierConfidence.model_validate({"threshold": 0.8, "reference": ref})
    assert tc.reference == ref
    assert tc.to_yaml_dict() == {"threshold": 0.8, "reference": ref}
    for bad in ([0.5, 0.5], [0.2] * 11, [1.5, *[0.0] * 10]):
        with pytest.raises(ValidationError, match="reference"):
            TierConfidence.model_validate({"reference": bad})
    # without a reference the serialised form is what it was before the field existed, so the
    # revision names (content hashes) of existing policies do not change
    assert "reference" not in TierConfidence().model_dump()
    assert TierConfidence().model_dump(by_alias=True) == {"threshold": 0.5, "calibration": None}


def test_psi_window_add_and_current_match_observe():
    rng = random.Random(5)
    ref = histogram([rng.random() for _ in range(200)], CONFIDENCE_EDGES)
    a = PSIWindow(CONFIDENCE_EDGES, ref, window=50, step=10)
    b = PSIWindow(CONFIDENCE_EDGES, ref, window=50, step=10)
    for i in range(120):
        x = rng.random() ** 0.3
        got = a.observe(x)
        b.add(x)
        assert b.count == min(i + 1, 50) and b.full == (i >= 49) and b.seen == i + 1
        if got is not None:
            assert b.current() == pytest.approx(got)
    assert PSIWindow(CONFIDENCE_EDGES, ref, window=50).current() is None  # not full yet
