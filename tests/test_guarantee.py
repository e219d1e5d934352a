"""The calibrate guarantee: exact p-values, fixed-sequence certification, and its coverage on
generated data whose true accuracy gap is known."""

import math
import random

import pytest

from tierguard.calibration import SelectionObjective, calibrate, capable_baseline, evaluate
from tierguard.cascade import route
from tierguard.confidence import CalibrationMap
from tierguard.gaptest import binom_cdf, binom_sf, binom_upper, gap_p_value, signed_root
from tierguard.guarantee import RAW_GRID, CertificationError, Row, certify, pin_threshold, score


def _brute_sf(k, n, p):
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1))


@pytest.mark.parametrize(
    "k,n,p", [(0, 10, 0.3), (3, 10, 0.3), (9, 10, 0.3), (3, 285, 0.01), (150, 285, 0.5), (40, 285, 0.2)]
)
def test_binomial_tails_match_the_definition(k, n, p):
    assert binom_sf(k, n, p) == pytest.approx(_brute_sf(k, n, p), rel=1e-9, abs=1e-15)
    assert binom_cdf(k, n, p) == pytest.approx(1 - _brute_sf(k + 1, n, p), rel=1e-9, abs=1e-15)


def test_clopper_pearson_upper_bound():
    # zero successes: the bound solves (1 - p)^n = alpha
    assert binom_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert binom_upper(100, 100, 0.05) == 1.0


def test_statistic_is_monotone_in_losses_and_gains():
    n, eps = 120, 0.02
    for x in range(0, 30):
        values = [signed_root(x, y, n, eps) for y in range(0, 60)]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    for y in range(0, 30):
        values = [signed_root(x, y, n, eps) for x in range(0, 60)]
        assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


def test_p_value_values():
    # no loss and no gain: the worst null has p_b = 0, p_a = eps, so p = (1 - eps)^n exactly
    assert gap_p_value(0, 0, 285, 0.01) == pytest.approx(0.99**285, rel=1e-6)
    # a loss with no gain is weaker evidence; gains make it stronger
    assert gap_p_value(1, 0, 285, 0.01) > gap_p_value(0, 0, 285, 0.01)
    assert gap_p_value(2, 10, 285, 0.01) < 0.01
    assert gap_p_value(12, 4, 285, 0.01) > 0.5
    with pytest.raises(ValueError):
        gap_p_value(5, 5, 8, 0.01)


def test_p_value_is_valid_at_the_null_boundary():
    """Rejections at level delta, under nulls with p_a - p_b = eps exactly (the hardest case)."""
    rng = random.Random(3)
    n, eps, delta, draws = 60, 0.05, 0.1, 300
    for pb in (0.0, 0.02, 0.1):
        pa = pb + eps
        rejected = 0
        for _ in range(draws):
            a = b = 0
            for _ in range(n):
                u = rng.random()
                a += u < pa
                b += pa <= u < pa + pb
            rejected += gap_p_value(a, b, n, eps) <= delta
        assert rejected / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws), pb


# --- coverage on generated data --------------------------------------------------------------------

CAPABLE_ACC = 0.85


def _cheap_acc(raw):
    return 0.45 + 0.55 * raw


def _true_gap(r):
    """E[1[capable right] - 1[cascade right]] when the cheap tier answers at raw >= r (raw ~ U(0, 1))."""
    return CAPABLE_ACC * (1 - r) - (0.45 * (1 - r) + 0.275 * (1 - r * r))


def _draw(n, rng):
    rows = []
    for _ in range(n):
        raw = rng.random()
        rows.append(
            Row((raw, 0.9), (rng.random() < _cheap_acc(raw), rng.random() < CAPABLE_ACC), (1.0, 10.0))
        )
    return rows


def test_guarantee_holds_on_independent_draws_with_known_truth():
    """Over 200 independent calibration sets, the certified policy's true gap exceeds eps in at
    most a share delta of them (plus three Monte-Carlo standard errors), and the method is not
    vacuous: most draws certify a policy that saves money."""
    rng = random.Random(11)
    n, eps, delta, draws = 100, 0.05, 0.1, 200
    violations = certified = 0
    for _ in range(draws):
        cert = certify(_draw(n, rng), eps, delta)
        if cert.chosen is None:
            continue
        certified += 1
        violations += _true_gap(cert.chosen.raw_threshold) > eps
    mc = math.sqrt(delta * (1 - delta) / draws)
    assert violations / draws <= delta + 3 * mc, (violations, certified)
    assert certified >= draws * 0.5


def test_selection_on_the_certifying_rows_would_break_the_bound():
    """The check above can fail: choosing the cheapest threshold whose *observed* gap is within
    eps on the same rows (what calibrate used to do) violates the bound far more often than delta."""
    rng = random.Random(12)
    n, eps, draws = 100, 0.05, 200
    violations = 0
    for _ in range(draws):
        rows = _draw(n, rng)
        ok = [t for t in RAW_GRID if (lambda s: (s[0] - s[1]) / n <= eps)(score(rows, t))]
        violations += bool(ok) and _true_gap(min(ok)) > eps
    assert violations / draws > 0.2


def test_certify_rejects_bad_input():
    rows = _draw(10, random.Random(1))
    with pytest.raises(CertificationError, match="no rows"):
        certify([], 0.01, 0.1)
    with pytest.raises(CertificationError, match="delta"):
        certify(rows, 0.01, 0.0)
    with pytest.raises(CertificationError, match="eps"):
        certify(rows, 1.5, 0.1)


# --- the written policy accepts exactly what was certified -----------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.62, 0.999, 1.0])
def test_pinned_map_accepts_exactly_the_raw_threshold(threshold):
    points = [(0.1, 0.3), (0.5, 0.3), (0.6, 0.7), (0.99, 0.7), (1.0, 0.9)]  # flat steps, as fitted
    pinned, level = pin_threshold(points, threshold)
    cmap = CalibrationMap(pinned)  # a valid monotone map
    rng = random.Random(0)
    raws = [rng.random() for _ in range(2000)] + [0.0, 1.0, threshold, 0.5, 0.6, 0.99]
    for x in raws:
        assert (cmap(x) >= level) == (x >= threshold), x
    # calibrated values move by at most the pin step away from a flat block around the threshold
    for x in (0.05, 0.3, 0.55, 0.8):
        if abs(x - threshold) > 0.1:
            assert cmap(x) == pytest.approx(CalibrationMap(points)(x), abs=0.41)


def test_calibrate_writes_the_certified_policy():
    import tempfile
    from pathlib import Path

    from tierguard.outcomes import Row as DataRow
    from tierguard.policy import load_policy_spec

    rng = random.Random(5)
    rows = [
        DataRow(f"q{i}", "b", "train", "c", "p", r.raw, r.correct, r.cost, ("A", "A"))
        for i, r in enumerate(_draw(400, rng))
    ]
    p = Path(tempfile.mkdtemp()) / "p.yaml"
    p.write_text(
        "tiers:\n"
        "  - {name: cheap, baseUrl: 'http://127.0.0.1:9101/v1', model: cheap}\n"
        "  - {name: capable, baseUrl: 'http://127.0.0.1:9102/v1', model: capable}\n"
    )
    _, spec = load_policy_spec(p)
    cal = calibrate(spec, rows, SelectionObjective(max_accuracy_drop=0.05, delta=0.1))
    cert = cal.certificate
    assert cert is not None and cert.chosen is not None and not cal.capable_only
    r_star = cert.chosen.raw_threshold
    for r in rows:  # the proxy's decision code accepts exactly raw >= the certified threshold
        assert (route(cal.spec, r.raw).answered_by == 0) == (r.raw[0] >= r_star)
    ev = evaluate(cal.spec, rows)
    assert 1 - ev.cost / capable_baseline(rows).cost == pytest.approx(cert.chosen.savings)
    record = cert.record()
    assert record["eps"] == 0.05 and record["delta"] == 0.1 and record["n"] == 400
    assert len(record["dataSha256"]) == 64 and record["certified"] is True
    assert "at most 5 points below the capable tier" in cert.statement()
