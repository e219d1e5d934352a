import json
import random

import pytest
import yaml

from needs import shared_data
from test_replay import POLICY, REPO, make_rows, tierguard, write_jsonl
from tierguard.calibration import (
    SelectionObjective,
    calibrate,
    capable_baseline,
    evaluate,
    fit_calibration,
    pav,
)
from tierguard.confidence import CalibrationMap
from tierguard.outcomes import Row, load_dataset
from tierguard.policy import TierConfidence, load_policy_spec


def test_pav_is_monotone_and_pools_ties():
    raw = [0.1, 0.2, 0.2, 0.3, 0.4, 0.5]
    correct = [True, False, True, False, True, True]
    blocks = pav(raw, correct)
    rates = [b.rate for b in blocks]
    assert rates == sorted(rates)
    assert sum(b.n for b in blocks) == 6
    # the tied raw values 0.2 are never split across blocks
    assert all(b.raw_sum / b.n != 0.2 or b.n >= 2 for b in blocks)


def test_fit_is_thin_monotone_and_loads_as_tier_confidence():
    rng = random.Random(0)
    raw = [rng.random() for _ in range(5000)]
    correct = [rng.random() < x for x in raw]  # a perfectly calibrated raw score
    points = fit_calibration(raw, correct, max_points=20)
    assert 2 <= len(points) <= 20
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert ys == sorted(ys)
    TierConfidence(calibration=[list(p) for p in points])  # validates as the CRD field
    cmap = CalibrationMap(points)
    for x in (0.2, 0.5, 0.8):
        assert cmap(x) == pytest.approx(x, abs=0.07)


def test_fit_never_claims_certainty_from_few_rows():
    points = fit_calibration([0.9, 0.95, 0.99, 1.0] * 3, [True] * 12)
    assert all(y < 1.0 for _, y in points)
    assert len(points) == 2  # one block: a constant map
    assert fit_calibration([], []) == []
    with pytest.raises(ValueError):
        fit_calibration([0.5], [True], max_points=1)


def _rows(n, seed):
    """Two tiers: the cheap one is always right when its raw confidence is >= 0.8."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        raw = rng.random()
        cheap_ok = raw >= 0.8 or rng.random() < 0.3
        rows.append(Row("q", "b", "train", "c", "p", (raw, 0.9), (cheap_ok, True), (1.0, 10.0), ("A", "A")))
    return rows


def _spec():
    _, spec = load_policy_spec_text(
        """
tiers:
  - {name: cheap, baseUrl: "http://127.0.0.1:9101/v1", model: cheap}
  - {name: capable, baseUrl: "http://127.0.0.1:9102/v1", model: capable}
"""
    )
    return spec


def load_policy_spec_text(text, tmp=None):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    p = d / "p.yaml"
    p.write_text(text)
    return load_policy_spec(p)


def test_thresholds_meet_the_accuracy_objective_on_the_fitted_rows():
    rows = _rows(2000, 1)
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01, confidence=0.0))
    ev = evaluate(cal.spec, rows)
    base = capable_baseline(rows)
    assert ev.accuracy >= base.accuracy - 0.01
    assert ev.shares[0] > 0.15  # the sure answers (raw >= 0.8) are accepted
    assert ev.cost < base.cost
    assert cal.spec.tiers[0].confidence.calibration
    # a confidence bound is at least as conservative as the point estimate
    bounded = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01, confidence=0.95))
    assert evaluate(bounded.spec, rows).accuracy >= ev.accuracy - 1e-12


def test_target_cost_objective():
    rows = _rows(1000, 2)
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=None, target_cost=0.6))
    ev = evaluate(cal.spec, rows)
    assert ev.cost <= 0.6 * capable_baseline(rows).cost + 1e-9


@pytest.fixture
def files(tmp_path):
    data = write_jsonl(tmp_path / "o.jsonl", make_rows(900, seed=4), extra_lines=[(7, "[1, 2]")])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return data, policy, tmp_path


def test_calibrate_command_writes_a_loadable_policy(files):
    data, policy, tmp = files
    out = tmp / "calibrated.yaml"
    proc = tierguard("calibrate", "--data", data, "--policy", policy, "--split", "train", "--out", out)
    assert f"{data}:8: expected a JSON object" in proc.stderr  # the malformed line, by number
    assert "objective: largest savings" in proc.stdout
    assert "savings" in proc.stdout and f"wrote {out}" in proc.stdout
    text = out.read_text()
    assert text.startswith("# Calibrated by `tierguard calibrate`")
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "CascadePolicy" and manifest["metadata"]["name"] == "synth"
    name, spec = load_policy_spec(out)
    assert name == "synth"
    for tier in spec.tiers:
        assert tier.confidence.calibration and len(tier.confidence.calibration) <= 20
    # replay uses the written thresholds as they are (nothing to fit)
    rp = tierguard(
        "replay", "--data", data, "--policy", out, "--out", tmp / "r", "--strategies", "cascade", "--quiet"
    )
    assert rp.returncode == 0
    report = json.loads((tmp / "r" / "report.json").read_text())
    assert report["fit"]["source"] == "policy file"
    assert [t["threshold"] for t in report["policy"][:-1]] == [
        t.confidence.threshold for t in spec.tiers[:-1]
    ]


def test_calibrate_command_errors(files):
    data, policy, tmp = files
    proc = tierguard(
        "calibrate",
        "--data",
        data,
        "--policy",
        policy,
        "--split",
        "validation",
        "--out",
        tmp / "x.yaml",
        check=False,
    )
    assert proc.returncode == 2
    assert "no usable rows for split 'validation'" in proc.stderr and "synth/train" in proc.stderr
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--strict", "--out", tmp / "x.yaml", check=False
    )
    assert proc.returncode == 2 and f"{data}:8:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_calibrate_on_shared_mmlu_train(tmp_path):
    shared = shared_data()
    out = tmp_path / "mmlu.yaml"
    tierguard(
        "calibrate", "--data", shared, "--policy", REPO / "examples/replay/mmlu-3tier.yaml",
        "--benchmark", "mmlu", "--split", "train", "--out", out,
    )  # fmt: skip
    _, spec = load_policy_spec(out)
    ds = load_dataset(shared, spec, benchmarks=["mmlu"])
    train = ds.select(split="train")
    assert len(train) == 285
    ev = evaluate(spec, train)
    base = capable_baseline(train)
    assert ev.accuracy >= base.accuracy - 0.01
    assert all(len(t.confidence.calibration or []) <= 20 for t in spec.tiers)


def test_long_cascades_are_searched_by_coordinate_ascent():
    rng = random.Random(9)
    n_t = 5
    rows = []
    for _ in range(400):
        raws = tuple(rng.random() for _ in range(n_t))
        correct = tuple(t == n_t - 1 or r >= 0.7 or rng.random() < 0.4 for t, r in enumerate(raws))
        cost = tuple(float(2**t) for t in range(n_t))
        rows.append(Row("q", "b", "train", "c", "p", raws, correct, cost, ("A",) * n_t))
    tiers = "\n".join(
        f'  - {{name: t{i}, baseUrl: "http://127.0.0.1:{9100 + i}/v1", model: m{i}}}' for i in range(n_t)
    )
    _, spec = load_policy_spec_text(f"tiers:\n{tiers}\n")
    obj = SelectionObjective(max_accuracy_drop=0.02, confidence=0.0)
    cal = calibrate(spec, rows, obj)
    assert len(cal.results) < 4000  # not the exhaustive product
    ev = evaluate(cal.spec, rows)
    base = capable_baseline(rows)
    assert ev.accuracy >= base.accuracy - 0.02
    assert ev.cost < base.cost


# --- the drift reference -------------------------------------------------------------------------


def test_calibrate_writes_each_tiers_drift_reference_on_the_rows_that_reach_it():
    from tierguard.calibration import reached_confidences, with_confidence
    from tierguard.cascade import route
    from tierguard.drift import reference_fractions

    rows = _rows(2000, 3)
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01, confidence=0.0))
    cheap, capable = (t.confidence for t in cal.spec.tiers)
    # the cheap tier sees every query: its reference is its calibrated confidence on all rows
    cmap = cheap.calibration_map()
    assert cheap.reference == reference_fractions([cmap(r.raw[0]) for r in rows])
    # the capable tier sees only what the cheap tier escalated under the chosen threshold
    escalated = [r for r in rows if route(cal.spec, r.raw).answered_by == 1]
    assert 100 <= len(escalated) < len(rows)
    cap_map = capable.calibration_map()
    assert capable.reference == reference_fractions([cap_map(r.raw[1]) for r in escalated])
    assert cal.reference_rows == [len(rows), len(escalated)]
    assert [len(v) for v in reached_confidences(cal.spec, rows)] == cal.reference_rows

    # too few rows reach a tier: no reference, and a stale one from the source policy is removed
    stale = with_confidence(cal.spec, references=[cheap.reference, cheap.reference])
    few = calibrate(
        stale, rows[:150], SelectionObjective(max_accuracy_drop=0.01, confidence=0.0), min_reference_rows=120
    )
    assert few.spec.tiers[0].confidence.reference is not None
    assert few.reference_rows is not None and few.reference_rows[1] < 120
    assert few.spec.tiers[1].confidence.reference is None


def test_calibrate_command_writes_the_reference(files):
    from tierguard.drift import CONFIDENCE_EDGES

    data, policy, tmp = files
    out = tmp / "calibrated.yaml"
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--split", "train", "--out", out,
        "--min-reference-rows", "50",
    )  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("drift references"))
    raw = yaml.safe_load(out.read_text())
    _, spec = load_policy_spec(out)
    for written, tier in zip(raw["spec"]["tiers"], spec.tiers):
        ref = tier.confidence.reference
        if ref is None:
            assert f"{tier.name} none (only" in line and "reference" not in written["confidence"]
            continue
        assert f"{tier.name} (" in line
        assert written["confidence"]["reference"] == ref
        assert len(ref) == len(CONFIDENCE_EDGES) + 1 and sum(ref) == pytest.approx(1.0, abs=1e-6)
    assert spec.tiers[0].confidence.reference is not None  # the first tier sees every row
    bad = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp / "x.yaml", "--min-reference-rows", "0",
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--min-reference-rows must be at least 1" in bad.stderr
    assert "Traceback" not in bad.stderr
