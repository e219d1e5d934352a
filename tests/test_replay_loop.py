"""The closed-loop scenario: review labels feed tune, tune brings a drifted cascade back.

Generated rows with known truth: a cheap tier whose confidence is calibrated before the shift and
over-confident in a band after it; the capable tier is equally good throughout."""

from __future__ import annotations

import random

import pytest
import yaml

from tierguard.calibration import with_confidence
from tierguard.cascade import route
from tierguard.outcomes import Row
from tierguard.policy import parse_policy_spec
from tierguard.replay.loop import Compared, Loop, LoopConfig, Table, TuneRequest, tune_certified

SPEC = """
tiers:
  - name: cheap
    baseUrl: http://127.0.0.1:9101/v1
    model: cheap
  - name: capable
    baseUrl: http://127.0.0.1:9103/v1
    model: capable
"""


def _spec(threshold: float):
    spec = parse_policy_spec(yaml.safe_load(SPEC))
    return with_confidence(spec, thresholds=[threshold, 0.5])


def rows(n: int, seed: int, shifted: bool) -> list[Row]:
    """Cheap tier's raw confidence c ~ U(0.5, 1), right with probability c; after the shift the
    band [0.9, 0.97) is right only with probability c - 0.3. The capable tier is right on 97% of
    the questions the cheap one gets right and 60% of the others; a wrong answer is a random wrong
    letter. Costs 0.1 and 10."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = 0.5 + 0.5 * rng.random()
        p = c - 0.3 if shifted and 0.9 <= c < 0.97 else c
        cheap = rng.random() < p
        capable = rng.random() < (0.97 if cheap else 0.6)
        out.append(
            Row(
                f"q{seed}-{i}",
                "b",
                "test",
                "c",
                f"question {i} about {'kidneys' if shifted else 'algebra'} topic {i % 13}",
                (c, 0.9),
                (cheap, capable),
                (0.1, 10.0),
                ("A" if cheap else rng.choice("BCD"), "A" if capable else rng.choice("BCD")),
            )
        )
    return out


def _loop(threshold=0.9, tuner=None, **kw):
    settings = dict(
        shift_at=2000, horizon=6000, review_rate=0.2, tune_every=250, label_window=2000,
        max_step=0.1, shadow_rate=0.5, tune_from=2000, runs=4, seed=3,
    )  # fmt: skip
    cfg = LoopConfig("a", "b", **{**settings, **kw})
    return Loop(_spec(threshold), rows(2000, 1, False), rows(2000, 2, True), rows(1000, 3, False), cfg, tuner)


def test_table_routes_like_the_proxy():
    spec = _spec(0.8)
    rs = rows(300, 9, True)
    table = Table(spec, rs, None)
    rng = random.Random(1)
    for _ in range(20):
        thr = [rng.random()]
        s = with_confidence(spec, thresholds=[thr[0], 0.5])
        assert [table.answered(i, thr) for i in range(len(rs))] == [route(s, r.raw).answered_by for r in rs]


def test_certified_tune_from_review_evidence_brings_the_cascade_back_and_keeps_savings():
    out = _loop().run()
    assert out["tuner"] == "tune_certified" and out["target_basis"].startswith("certified")
    cap_after, floor = out["capable_accuracy_after"], out["capable_accuracy_after"] - 0.01
    # the drift is real: the static policy falls below capable - 1 point after the shift
    assert out["static_after"]["accuracy"] < floor
    # tuned: back within a point of the capable tier, in every run, and still cheaper
    assert out["tuned_final"]["accuracy"] >= floor
    assert out["never_back"] == 0 and out["median_back_after"] is not None
    assert out["median_back_after"] <= 2000
    assert 0.0 < out["tuned_final"]["savings"] < out["static_after"]["savings"]
    assert out["tuned_final"]["thresholds"][0] > 0.9
    # the curve: after the shift, once tuned, better than the static policy
    assert all(c["tuned_accuracy"] > c["static_accuracy"] for c in out["curve"] if c["request"] >= 4000)
    assert [c["request"] for c in out["curve"]][-1] == 8000
    assert 0.0 < out["shadow_cost_share"] < 0.5
    assert cap_after == pytest.approx(0.87, abs=0.03)


def test_the_tuner_is_one_function_behind_the_adapter():
    seen: list[TuneRequest] = []

    def keep(req: TuneRequest) -> list[float]:
        seen.append(req)
        return list(req.thresholds)

    out = _loop(tuner=keep).run()
    assert seen and all(len(r.labels) == 1 for r in seen)
    assert all(lb.confidence >= 0.9 for r in seen for lb in r.labels[0])  # accepted answers only
    # the shadow and escalation comparisons a certified tune reads, as the proxy records them
    compared = [c for r in seen for c in r.compared]
    assert compared and all(c.probability == 0.5 for c in compared)
    for c in compared:
        ((tier, conf, _agree),) = c.comparisons
        assert tier == "cheap" and (conf >= 0.9) == (c.answered == "cheap")
    assert all(r.spec is not None and r.spec.tiers[0].confidence.threshold == 0.9 for r in seen)
    assert out["tuned_final"]["accuracy"] == pytest.approx(out["static_after"]["accuracy"])
    assert out["never_back"] == 4 and out["median_back_after"] is None


def test_tune_certified_moves_only_on_certified_evidence():
    spec = _spec(0.9)
    rng = random.Random(2)

    def request(agree_share: float, n: int) -> TuneRequest:
        compared = []
        for i in range(n):
            c = 0.5 + 0.5 * rng.random()
            answered = "cheap" if c >= 0.9 else "capable"
            agree = rng.random() < agree_share or c < 0.9
            compared.append(Compared(f"r{i}", 0.5, answered, (("cheap", c, agree),)))
        return TuneRequest((0.9,), ((),), 0.01, 0.05, spec, tuple(compared))

    # the cheap tier always agrees with the capable one: its threshold may fall, by at most 0.05
    lowered = tune_certified(request(1.0, 1000))[0]
    assert 0.85 - 1e-9 <= lowered < 0.9
    # it disagrees on a third of its answers: even 0.95 is not certified, nothing moves
    assert tune_certified(request(0.67, 1000)) == [0.9]
    # too few rows to certify anything: nothing moves
    assert tune_certified(request(1.0, 50)) == [0.9]


# --- through the command, and the report in a real browser ------------------------------------------


@pytest.fixture(scope="module")
def loop_report(tmp_path_factory):
    from test_replay import POLICY, make_rows, tierguard, write_jsonl

    tmp = tmp_path_factory.mktemp("loop")
    rs = make_rows(900, seed=5, benchmark="easy") + make_rows(
        900, seed=6, benchmark="hard", difficulty_shift=0.3
    )
    data = write_jsonl(tmp / "o.jsonl", rs)
    policy = tmp / "p.yaml"
    policy.write_text(POLICY)
    out = tmp / "report"
    proc = tierguard(
        "replay", "--data", data, "--policy", policy, "--out", out, "--benchmark", "easy",
        "--strategies", "capable-only,cascade", "--scenario", "loop", "--scenario-policy", "selected",
        "--drift-from", "easy", "--drift-to", "hard", "--shift-at", "2000", "--horizon", "6000",
        "--loop-review-rate", "0.1", "--tune-every", "500", "--label-window", "3000", "--shadow-rate", "0.3",
        "--max-accuracy-drop", "0.02", "--runs", "3",
    )  # fmt: skip
    return out, proc


def test_loop_scenario_through_the_command(loop_report):
    import json

    out, proc = loop_report
    report = json.loads((out / "report.json").read_text())
    lo = report["loop"]
    assert lo["fit"]["source"].startswith("selected on train")
    assert lo["tuner"] == "tune_certified"
    assert len(lo["curve"]) == 8000 // 500 and len(lo["back_after"]) == 3
    assert lo["median_labels"] > 0
    assert "loop easy -> hard at request 2000" in proc.stdout
    html = (out / "report.html").read_text()
    assert "Scenario: the closed loop" in html and "<script" not in html.lower()


def test_loop_scenario_bad_input_is_a_clear_error(tmp_path):
    from test_replay import POLICY, make_rows, tierguard, write_jsonl

    data = write_jsonl(tmp_path / "o.jsonl", make_rows(300, seed=5, benchmark="easy"))
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    common = ["replay", "--data", data, "--policy", policy, "--out", tmp_path / "r", "--scenario", "loop"]
    proc = tierguard(*common, "--drift-from", "easy", "--drift-to", "nowhere", check=False)
    assert proc.returncode != 0 and "no usable rows of benchmark 'nowhere'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = tierguard(*common, "--max-step", "0", check=False)
    assert proc.returncode != 0 and "--max-step must lie in (0, 1]" in proc.stderr


@pytest.mark.slow
def test_loop_curves_render_in_headless_chromium(loop_report, tmp_path):
    import subprocess

    from needs import chromium

    out, _ = loop_report
    browser = chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    section = dom[dom.index("Scenario: the closed loop") :]
    assert section.count("<svg") == 2  # accuracy over time, savings over time
    for name in ("static policy", "tuned from review labels", "capable tier alone"):
        assert name in section
    assert section.count("<polyline") >= 6  # 4 accuracy lines, 2 savings lines
    assert 'id="loop-back"' in section


def test_tune_from_the_shift_keeps_the_static_policy_until_then():
    out = _loop().run()
    before = [c for c in out["curve"] if c["request"] <= 2000]
    assert before and all(c["tuned_thresholds"] == [0.9] for c in before)
    assert all(c["tuned_accuracy"] == c["static_accuracy"] for c in before)
    assert out["median_back_after"] is not None and 0 < out["median_back_after"] <= 6000
