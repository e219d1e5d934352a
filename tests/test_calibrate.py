import json
import random

import pytest
import yaml

from needs import shared_data
from test_replay import POLICY, REPO, make_rows, tierguard, write_jsonl
from tierguard.calibrate import summary_lines
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
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01))
    ev = evaluate(cal.spec, rows)
    base = capable_baseline(rows)
    assert ev.accuracy >= base.accuracy - 0.01
    assert ev.shares[0] > 0.15  # the sure answers (raw >= 0.8) are accepted
    assert ev.cost < base.cost
    assert cal.spec.tiers[0].confidence.calibration
    assert cal.certificate is not None and cal.certificate.chosen is not None
    # the written policy accepts exactly what was certified: the same losses and gains
    chosen = cal.certificate.chosen
    assert ev.shares == chosen.shares
    assert round(1 - ev.cost / base.cost, 12) == round(chosen.savings, 12)
    # a smaller delta is at least as conservative
    strict = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01, delta=0.001))
    assert evaluate(strict.spec, rows).accuracy >= ev.accuracy - 1e-12


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
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--split", "train", "--out", out,
        "--max-accuracy-drop", "0.05",
    )  # fmt: skip
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
    assert (
        "no rows of split 'validation'; the file has splits: test (600 rows), train (300 rows)" in proc.stderr
    )
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--strict", "--out", tmp / "x.yaml", check=False
    )
    assert proc.returncode == 2 and f"{data}:8:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_calibrate_on_shared_train_splits(tmp_path):
    # MMLU's shipped train split: at every threshold the cascade is below gpt-4o on train, so
    # nothing can be certified within 1 point: capable-only is proposed and nothing is written
    shared = shared_data()
    out = tmp_path / "mmlu.yaml"
    proc = tierguard(
        "calibrate", "--data", shared, "--policy", REPO / "examples/replay/mmlu-3tier.yaml",
        "--benchmark", "mmlu", "--split", "train", "--out", out, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "proposal: capable-only" in proc.stdout and "No cheaper tier could be certified" in proc.stdout
    assert not out.exists()
    # MedMCQA: a certified policy, with its guarantee recorded in the manifest
    out = tmp_path / "medmcqa.yaml"
    proc = tierguard(
        "calibrate", "--data", shared, "--policy", REPO / "examples/replay/medmcqa-3tier.yaml",
        "--benchmark", "medmcqa", "--split", "train", "--out", out,
    )  # fmt: skip
    manifest = yaml.safe_load(out.read_text())
    record = json.loads(manifest["metadata"]["annotations"]["tierguard.io/guarantee"])
    assert record["certified"] and record["eps"] == 0.01 and record["delta"] == 0.1 and record["n"] == 300
    _, spec = load_policy_spec(out)
    ds = load_dataset(shared, spec, benchmarks=["medmcqa"])
    train = ds.select(split="train")
    ev = evaluate(spec, train)
    base = capable_baseline(train)
    assert ev.cost < base.cost
    assert round(1 - ev.cost / base.cost, 4) == record["trainSavings"]
    assert all(len(t.confidence.calibration or []) <= 21 for t in spec.tiers)


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
    obj = SelectionObjective(max_accuracy_drop=None, target_cost=0.5)
    cal = calibrate(spec, rows, obj)
    assert 0 < len(cal.results) < 4000  # not the exhaustive product
    assert cal.certificate is None  # a target cost comes with no guarantee
    kept = [int(t.name[1:]) for t in cal.spec.tiers]
    from tierguard.calibration import project

    ev = evaluate(cal.spec, project(rows, kept))
    base = capable_baseline(rows)
    assert ev.cost <= 0.5 * base.cost + 1e-9


# --- the drift reference -------------------------------------------------------------------------


def test_calibrate_writes_each_tiers_drift_reference_on_the_rows_that_reach_it():
    from tierguard.calibration import reached_confidences, with_confidence
    from tierguard.cascade import route
    from tierguard.drift import reference_fractions

    rows = _rows(2000, 3)
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=0.01))
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
    few = calibrate(stale, rows[:150], SelectionObjective(max_accuracy_drop=0.03), min_reference_rows=120)
    assert few.spec.tiers[0].confidence.reference is not None
    assert few.reference_rows is not None and few.reference_rows[1] < 120
    assert few.spec.tiers[1].confidence.reference is None


def test_calibrate_command_writes_the_reference(files):
    from tierguard.drift import CONFIDENCE_EDGES

    data, policy, tmp = files
    out = tmp / "calibrated.yaml"
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--split", "train", "--out", out,
        "--min-reference-rows", "50", "--max-accuracy-drop", "0.05",
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


# --- bad input, as a new user meets it (issue 7) -----------------------------------------------------


def test_max_accuracy_drop_zero_is_used_not_replaced(files):
    data, policy, tmp = files
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp / "z.yaml",
        "--max-accuracy-drop", "0", check=False,
    )  # fmt: skip
    assert "accuracy >= capable tier - 0 points" in proc.stdout, proc.stdout
    for bad, msg in (
        ("-0.01", "--max-accuracy-drop must lie in [0, 1)"),
        ("1", "--max-accuracy-drop must lie"),
    ):
        proc = tierguard(
            "calibrate", "--data", data, "--policy", policy, "--out", tmp / "z.yaml",
            "--max-accuracy-drop", bad, check=False,
        )  # fmt: skip
        assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp / "z.yaml", "--delta", "0", check=False
    )
    assert proc.returncode == 2 and "--delta must lie in (0, 1)" in proc.stderr


def test_correct_must_be_a_real_boolean(tmp_path):
    rows = make_rows(30, seed=1, split="train")
    rows[0]["models"]["small-model"]["correct"] = "yes"
    data = write_jsonl(tmp_path / "o.jsonl", rows)
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    proc = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp_path / "x.yaml", check=False
    )
    assert f"{data}:1: models.small-model.correct: Input should be a valid boolean" in proc.stderr
    strict = tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp_path / "x.yaml", "--strict", check=False
    )
    assert strict.returncode == 2 and "valid boolean" in strict.stderr and "Traceback" not in strict.stderr


def test_manifest_typo_is_an_error(files):
    data, _, tmp = files
    policy = tmp / "typo.yaml"
    policy.write_text(POLICY.replace("metadata:", "metdata:"))
    assert "metdata:" in policy.read_text()
    proc = tierguard("calibrate", "--data", data, "--policy", policy, "--out", tmp / "x.yaml", check=False)
    assert proc.returncode == 2
    assert "unknown top-level field 'metdata' (did you mean 'metadata'?)" in proc.stderr
    assert not (tmp / "x.yaml").exists()


def test_no_rows_messages_name_what_the_file_has(files):
    data, policy, tmp = files

    def err(*extra, data=data, policy=policy):
        proc = tierguard(
            "calibrate", "--data", data, "--policy", policy, "--out", tmp / "x.yaml", *extra, check=False
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        return proc.stderr

    assert "no rows of benchmark 'trivia'; the file has benchmarks: synth (900 rows)" in err(
        "--benchmark", "trivia"
    )
    other = tmp / "other.yaml"
    other.write_text(POLICY.replace("model: large-model", "model: gpt-9"))
    assert "the policy's model(s) 'gpt-9' are not in the file; it has models: large-model (" in err(
        policy=other
    )
    empty = tmp / "empty.jsonl"
    empty.write_text("\n")
    assert "the file is empty" in err(data=empty)


def test_equal_cost_label_says_when_costs_did_not_match():
    from tierguard.replay.report_html import cost_matched, equal_cost_label

    assert cost_matched(1.0, 0.995) and not cost_matched(1.0, 0.63)
    assert (
        equal_cost_label({"cost_matched": True, "cascade_cost": 1.0, "pre_route_cost": 1.0})
        == "at equal cost"
    )
    label = equal_cost_label({"cost_matched": False, "cascade_cost": 1.0, "pre_route_cost": 0.63})
    assert label.startswith("NOT at equal cost") and "37% cheaper" in label


# --- never a policy that loses money --------------------------------------------------------------


def _three_tier_spec():
    _, spec = load_policy_spec_text(
        "tiers:\n"
        + "\n".join(
            f'  - {{name: t{i}, baseUrl: "http://127.0.0.1:{9100 + i}/v1", model: m{i}}}' for i in range(3)
        )
        + "\n"
    )
    return spec


def test_a_tier_that_can_never_answer_is_dropped_from_the_written_policy(tmp_path):
    """--target-cost: the middle tier (cheap, but mostly wrong) only lowers accuracy: its threshold is 'never': it is
    left out of the policy (not called, not paid) and of the written manifest."""
    from tierguard.calibrate import write_policy
    from tierguard.calibration import can_accept, project

    rng = random.Random(4)
    rows = []
    for _ in range(600):
        raw0 = rng.random()
        ok0 = raw0 >= 0.5 or rng.random() < 0.2
        rows.append(Row("q", "b", "train", "c", "p", (raw0, rng.random(), 0.9), (ok0, rng.random() < 0.3, True),
                        (1.0, 0.5, 10.0), ("A",) * 3))  # fmt: skip
    spec = _three_tier_spec()
    cal = calibrate(spec, rows, SelectionObjective(max_accuracy_drop=None, target_cost=0.8))
    assert cal.dropped == ["t1"] and [t.name for t in cal.spec.tiers] == ["t0", "t2"]
    assert all(can_accept(cal.spec, i) for i in range(2))
    ev = evaluate(cal.spec, project(rows, [0, 2]))
    assert ev.cost == cal.chosen.cost and ev.cost <= 0.8 * capable_baseline(rows).cost
    src = tmp_path / "p.yaml"
    src.write_text(
        "apiVersion: tierguard.io/v1alpha1\nkind: CascadePolicy\nmetadata: {name: x}\nspec:\n  tiers:\n"
        + "".join(
            f"  - {{name: t{i}, baseUrl: 'http://127.0.0.1:{9100 + i}/v1', model: m{i}}}\n" for i in range(3)
        )
    )
    out = tmp_path / "out.yaml"
    write_policy(str(src), cal.spec, str(out), "header")
    assert [t["name"] for t in yaml.safe_load(out.read_text())["spec"]["tiers"]] == ["t0", "t2"]
    lines = "\n".join(summary_lines(cal, ["t0", "t1", "t2"], ["m0", "m1", "m2"]))
    assert "dropped tier t1: its threshold can never be reached" in lines
    assert "guarantee: none" in lines


def test_nothing_certifiable_proposes_capable_only_and_writes_nothing(tmp_path):
    rows = make_rows(300, seed=2, split="train")
    for r in rows:  # the small model is always wrong, yet confident
        r["models"]["small-model"].update(correct=False, conf_logprob=0.0)
        r["models"]["medium-model"].update(correct=False, conf_logprob=0.0)
    data = write_jsonl(tmp_path / "o.jsonl", rows)
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    out = tmp_path / "x.yaml"
    proc = tierguard("calibrate", "--data", data, "--policy", policy, "--out", out, check=False)
    assert proc.returncode == 3 and not out.exists()
    assert "proposal: capable-only" in proc.stdout and "No cheaper tier could be certified" in proc.stdout
    assert "serve the capable tier alone" in proc.stderr


def test_negative_train_savings_are_warned_about():
    rng = random.Random(6)
    rows = []
    for _ in range(400):
        raw = rng.random()
        rows.append(Row("q", "b", "train", "c", "p", (raw, 0.9), (raw >= 0.3, rng.random() < 0.7), (8.0, 10.0),
                        ("A", "A")))  # fmt: skip
    cal = calibrate(_spec(), rows, SelectionObjective(max_accuracy_drop=None, target_cost=2.0))
    assert cal.savings < 0
    assert any("more than the capable tier" in w and "negative savings" in w for w in cal.warnings)
