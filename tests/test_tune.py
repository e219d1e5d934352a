"""`tierguard tune`: thresholds from production comparisons with the capable tier, certified by
Learn-then-Test, bounded per run; coverage on generated traffic whose true gap is known."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tierguard.cli import main as cli_main
from tierguard.policy import load_policy_spec, parse_policy_spec
from tierguard.review.store import Event, Item, ShadowResult, open_store
from tierguard.review.tune import (
    Comparison,
    Evidence,
    TuneError,
    gather,
    route,
    route_steps,
    shifts,
    steps,
    thin,
    tune,
)

POLICY = """\
apiVersion: tierguard.io/v1alpha1
kind: CascadePolicy
metadata:
  name: shop
spec:
  tiers:
    - name: small
      baseUrl: http://small:8000/v1
      model: s
      confidence: {threshold: 0.8}
    - name: big
      baseUrl: http://big:8000/v1
      model: b
"""
THREE = {
    "tiers": [
        {"name": "a", "baseUrl": "http://a:1/v1", "model": "a", "confidence": {"threshold": 0.8}},
        {"name": "b", "baseUrl": "http://b:1/v1", "model": "b", "confidence": {"threshold": 0.7}},
        {"name": "c", "baseUrl": "http://c:1/v1", "model": "c"},
    ]
}


def spec_of(text=POLICY):
    data = yaml.safe_load(text)
    return parse_policy_spec(data.get("spec", data), "test")


def disagree_prob(c, slope):
    """P(the cheap answer differs from the capable one | calibrated confidence c)."""
    return min(1.0, slope * (1.0 - c))


def true_gap(t, slope):
    """E[1[c >= t] * disagree] for c ~ U(0, 1): slope * (1 - t)^2 / 2 (while slope * (1 - t) <= 1)."""
    assert slope * (1.0 - t) <= 1.0
    return slope * (1.0 - t) ** 2 / 2.0


def traffic(rng, n_requests, t0, slope, shadow_rate, escalation_rate, tag=""):
    """Production evidence of a two-tier cascade at threshold ``t0``: each request's cheap
    confidence is uniform; accepted answers are shadowed at ``shadow_rate``, escalated ones are
    recorded at ``escalation_rate``. A disagreement is a loss (the capable tier was right)."""
    rows = []
    for i in range(n_requests):
        c = rng.random()
        rate = shadow_rate if c >= t0 else escalation_rate
        if rng.random() >= rate:
            continue
        agree = rng.random() >= disagree_prob(c, slope)
        answered = "small" if c >= t0 else "big"
        rows.append(Evidence(f"r{tag}-{i}", rate, answered, (Comparison("small", c, agree),)))
    return rows


# --- the pieces ---------------------------------------------------------------------------------


def test_the_path_is_fixed_and_symmetric():
    assert shifts(0.05, 0.01) == [0.05, 0.04, 0.03, 0.02, 0.01, 0.0, -0.01, -0.02, -0.03, -0.04, -0.05]
    assert shifts(0.05, 0.02) == [0.05, 0.04, 0.02, 0.0, -0.02, -0.04, -0.05]
    assert shifts(0.0, 0.01) == [0.0]
    with pytest.raises(TuneError):
        shifts(0.05, 0.0)


def test_thinning_equalises_inclusion_probabilities():
    rows = [Evidence(f"a{i}", 0.1, "small", ()) for i in range(2000)]
    rows += [Evidence(f"b{i}", 1.0, "big", ()) for i in range(20000)]
    kept, q = thin(rows)
    assert q == 0.1
    assert sum(r.response_id.startswith("a") for r in kept) == 2000  # already at q: all kept
    b = sum(r.response_id.startswith("b") for r in kept)
    assert 1800 < b < 2200  # 10% of 20,000
    assert thin(rows) == (kept, q)  # from the ids alone: the same every run


def test_a_rows_loss_bound():
    tiers = ["small", "big"]
    dis = Evidence("x", 0.1, "small", (Comparison("small", 0.9, False),))
    assert route(dis, tiers, [0.8]) == (0, 1)
    assert route(dis, tiers, [0.95]) == (None, 0)  # escalated: the capable tier answers
    agree = Evidence("y", 0.1, "small", (Comparison("small", 0.9, True),))
    assert route(agree, tiers, [0.8]) == (0, 0)
    # a reviewer says the served cheap answer was right: the capable tier was not better
    assert route(Evidence("z", 0.1, "small", dis.comparisons, label=True), tiers, [0.8]) == (0, 0)
    assert route(Evidence("z", 0.1, "small", dis.comparisons, label=False), tiers, [0.8]) == (0, 1)
    # a bad outcome on a served cheap answer counts even when the answers agreed
    assert route(Evidence("w", 0.1, "small", agree.comparisons, bad_outcome=True), tiers, [0.8]) == (0, 1)
    # the label of an escalated request is the capable tier's: it says nothing of the cheap answer
    esc = Evidence("v", 1.0, "big", (Comparison("small", 0.5, False),), label=True)
    assert route(esc, tiers, [0.4]) == (0, 1)
    # three tiers: accepted by the first, so nothing is known of the second's answer
    three = ["a", "b", "c"]
    first = Evidence("u", 0.1, "a", (Comparison("a", 0.85, True),))
    assert route(first, three, [0.8, 0.7]) == (0, 0)
    assert route(first, three, [0.9, 0.7]) == (None, 1)  # would reach b: unknown, counted as a loss
    esc3 = Evidence("t", 0.1, "c", (Comparison("a", 0.5, True), Comparison("b", 0.6, False)))
    assert route(esc3, three, [0.8, 0.7]) == (None, 0)
    assert route(esc3, three, [0.8, 0.55]) == (1, 1)
    assert route(esc3, three, [0.45, 0.55]) == (0, 0)


def test_gather_joins_comparisons_labels_and_outcomes():
    rows = gather(
        [
            ("r1", 0.1, "b", "b", 0.9, True),
            ("r1", 0.1, "b", "a", 0.4, False),
            ("r2", None, "c", "a", 0.3, True),
        ],
        {"r1": True},
        {"r2"},
        ["a", "b", "c"],
    )
    by_id = {r.response_id: r for r in rows}
    assert [c.tier for c in by_id["r1"].comparisons] == ["a", "b"]  # cascade order
    assert by_id["r1"].label is True and not by_id["r1"].bad_outcome
    assert by_id["r2"].probability == 0.0 and by_id["r2"].bad_outcome  # unknown probability


# --- tune --------------------------------------------------------------------------------------


def test_plenty_of_agreement_below_the_threshold_lowers_it_by_at_most_max_step():
    rng = random.Random(1)
    rows = traffic(rng, 40000, 0.8, 0.02, 0.1, 1.0)  # true gap at t=0.75 is 0.0006
    t = tune(spec_of(), rows, eps=0.01, delta=0.1, max_step=0.05)
    assert t.is_certified and t.changed
    assert t.new_thresholds == (0.75,)
    assert t.spec.tiers[0].confidence.threshold == 0.75
    assert t.certified == len(t.path) == 11
    assert t.n < t.rows  # the escalated rows were thinned to the shadow rate
    assert abs(t.thinned_to - 0.1) < 1e-12
    rec = t.record()
    assert rec["certified"] and rec["previousThresholds"] == [0.8] and rec["thresholds"] == [0.75]
    assert "exchangeable" in rec["assumption"] and rec["n"] == t.n


def test_a_losing_threshold_is_raised_within_the_step_or_nothing_is_certified():
    rng = random.Random(2)
    # true gap: 0.3 * (1 - t)^2 / 2: 0.0135 at 0.7, 0.0094 at 0.75, 0.006 at 0.8
    rows = traffic(rng, 60000, 0.7, 0.3, 0.1, 1.0)
    t = tune(spec_of().model_copy(update={"tiers": _with_threshold(0.7)}), rows, max_step=0.1)
    assert t.is_certified and 0.75 <= t.new_thresholds[0] <= 0.8
    t = tune(spec_of().model_copy(update={"tiers": _with_threshold(0.7)}), rows, max_step=0.02)
    assert not t.is_certified and not t.changed
    assert t.spec.tiers[0].confidence.threshold == 0.7  # the input, unchanged
    assert "no thresholds within --max-step 0.02" in t.why_not()


def _with_threshold(x):
    spec = spec_of()
    conf = spec.tiers[0].confidence.model_copy(update={"threshold": x})
    return [spec.tiers[0].model_copy(update={"confidence": conf}), spec.tiers[1]]


def test_too_few_rows_say_how_many_are_needed():
    rows = traffic(random.Random(3), 1000, 0.8, 0.0, 0.1, 0.1)
    t = tune(spec_of(), rows)
    assert not t.is_certified
    assert "at least 230 are needed" in t.why_not()  # 0.99^n <= 0.1


def test_without_lowering_only_shifts_up_are_tested():
    rows = traffic(random.Random(1), 40000, 0.8, 0.02, 0.1, 1.0)
    t = tune(spec_of(), rows, allow_lower=False)
    assert t.is_certified and t.new_thresholds == (0.8,) and not t.lowering
    assert [p.shift for p in t.path] == [0.05, 0.04, 0.03, 0.02, 0.01, 0.0]


def test_bad_inputs_are_errors():
    with pytest.raises(TuneError, match="names tiers"):
        tune(spec_of(), [Evidence("x", 0.1, "mid", (Comparison("mid", 0.9, True),))])
    with pytest.raises(TuneError, match="eps"):
        tune(spec_of(), [], eps=0)
    with pytest.raises(TuneError, match="delta"):
        tune(spec_of(), [], delta=1)


def test_guarantee_holds_over_repeated_production_samples_with_known_truth():
    """200 independent production samples around a threshold where the true gap equals eps: the
    tuned thresholds' true gap exceeds eps in at most delta of them (+3 Monte-Carlo standard
    errors), and most of them certify something. The check can fail: choosing the lowest
    threshold whose observed loss is within eps on the same rows violates it far more often."""
    eps, delta, slope, t0, reps = 0.05, 0.1, 2.5, 0.8, 200  # true gap 1.25 (1 - t)^2: eps at 0.8
    rng = random.Random(11)
    spec = spec_of()
    violations = certified = naive_violations = 0
    for rep in range(reps):
        # about 120 shadowed and 1,440 escalated requests, thinned to ~600 at probability 0.1
        rows = traffic(rng, 6000, t0, slope, 0.1, 0.3, tag=str(rep))
        t = tune(spec, rows, eps=eps, delta=delta, max_step=0.05)
        if t.is_certified:
            certified += 1
            violations += true_gap(t.new_thresholds[0], slope) > eps + 1e-12
        kept, _ = thin(rows)
        prepared = [steps(r, ["small", "big"]) for r in kept]
        observed = {
            t0 + d: sum(route_steps(s, [t0 + d])[1] for s in prepared) / len(kept) for d in shifts(0.05, 0.01)
        }
        naive = min((th for th, loss in observed.items() if loss <= eps), default=t0 + 0.05)
        naive_violations += true_gap(naive, slope) > eps + 1e-12
    bound = delta + 3 * (delta * (1 - delta) / reps) ** 0.5
    assert violations / reps <= bound, (violations, certified)
    assert certified / reps > 0.8
    assert naive_violations / reps > bound, naive_violations


def test_the_tuned_policy_is_never_written_when_nothing_is_certified(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    url = f"sqlite:{tmp_path / 'r.db'}"
    store = open_store(url)
    rows = traffic(random.Random(5), 20000, 0.8, 0.9, 0.1, 1.0)  # gap 0.018 at 0.8, 0.0101 at 0.85
    store.add_shadow([_stored(r) for r in rows])
    store.close()
    out = tmp_path / "tuned.yaml"
    assert cli_main(["tune", "--store", url, "--policy", str(policy), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "nothing written" in err and "no thresholds within --max-step 0.05" in err
    assert not out.exists()


def _stored(r, policy="shop"):
    c = r.comparisons[0]
    source = "shadow" if r.answered == "small" else "escalation"
    return ShadowResult(
        r.response_id, 1.0, policy, "r1", c.tier, c.agree, 0.0, None, c.confidence, r.probability, source,
        r.answered,
    )  # fmt: skip


def test_cli_writes_the_tuned_policy_with_its_guarantee(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    url = f"sqlite:{tmp_path / 'r.db'}"
    store = open_store(url)
    rows = traffic(random.Random(6), 40000, 0.8, 0.02, 0.1, 1.0)
    store.add_shadow([_stored(r) for r in rows])
    # a label and a bad outcome on served cheap answers
    served = [r for r in rows if r.answered == "small"][:2]
    store.add_items(
        [Item(served[0].response_id, 1.0, "shop", "r1", "small", "b", 0.9, 0.1, 0.1, "q", "a", 0, 0, "h")]
    )
    store.set_label(served[0].response_id, "correct", "", "bob")
    store.add_event(Event(served[1].response_id, "rating", 1, 2.0, 1.0, "shop", "r1", "small"))
    store.close()
    out = tmp_path / "tuned.yaml"
    report = tmp_path / "path.json"
    argv = ["tune", "--store", url, "--policy", str(policy), "--out", str(out), "--json", str(report)]
    assert cli_main([*argv, "--bad-outcome", "rating<=2"]) == 0
    err = capsys.readouterr().err
    assert "small: threshold 0.8 -> 0.75" in err
    assert "1 labels, 1 responses with a bad outcome" in err
    assert "reviewed accuracy r1/small: 1.000" in err  # the labels' weighted accuracy, for context
    _, spec = load_policy_spec(out)
    assert spec.tiers[0].confidence.threshold == 0.75
    data = yaml.safe_load(out.read_text())
    assert data["metadata"]["name"] == "shop"
    guarantee = json.loads(data["metadata"]["annotations"]["tierguard.io/guarantee"])
    assert guarantee["certified"] and guarantee["thresholds"] == [0.75] and guarantee["eps"] == 0.01
    assert out.read_text().startswith("# written by tierguard tune")
    assert json.loads(report.read_text())["pathCertified"] == 11


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--policy-name", "other"], "no shadow or escalation comparisons for policy 'other'"),
        (["--bad-outcome", "rating<=>2"], "--bad-outcome 'rating<=>2'"),
        (["--max-accuracy-drop", "0"], "eps (--max-accuracy-drop) must lie in (0, 1)"),
    ],
)
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    url = f"sqlite:{tmp_path / 'r.db'}"
    store = open_store(url)
    store.add_shadow([_stored(r) for r in traffic(random.Random(7), 2000, 0.8, 0.1, 0.1, 1.0)])
    store.close()
    code = cli_main(
        ["tune", "--store", url, "--policy", str(policy), "--out", str(tmp_path / "o.yaml"), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_bad_store_and_policy(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    out = str(tmp_path / "o.yaml")
    assert cli_main(["tune", "--store", "mysql://x", "--policy", str(policy), "--out", out]) == 2
    assert "unknown review store 'mysql://x'" in capsys.readouterr().err
    assert (
        cli_main(
            ["tune", "--store", "postgresql://nobody@127.0.0.1:1/db", "--policy", str(policy), "--out", out]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "review store" in err and "Traceback" not in err
    assert (
        cli_main(
            [
                "tune",
                "--store",
                f"sqlite:{tmp_path / 'r.db'}",
                "--policy",
                str(tmp_path / "no.yaml"),
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "Traceback" not in capsys.readouterr().err


# --- on the shared recorded outcomes ------------------------------------------------------------


def recorded_traffic(rows, spec, n_requests, rng, shadow_rate=0.2, escalation_rate=1.0, tag=""):
    """Production evidence of ``spec`` (two tiers) on requests drawn from the recorded ``rows``:
    the cheap tier's calibrated confidence and whether its recorded answer agrees with the
    capable tier's, shadowed or recorded on escalation at the given rates."""
    from tierguard.answers import answers_agree

    cmap = spec.tiers[0].confidence.calibration_map()
    t = spec.tiers[0].confidence.threshold
    out = []
    for i in range(n_requests):
        r = rows[rng.randrange(len(rows))]
        if r.raw[0] is None:
            continue
        c = cmap(r.raw[0])
        accepted = c >= t
        rate = shadow_rate if accepted else escalation_rate
        if rng.random() >= rate:
            continue
        name = spec.tiers[0].name
        comp = Comparison(name, c, answers_agree(r.answer[0], r.answer[1]))
        out.append(Evidence(f"{tag}-{i}", rate, name if accepted else spec.tiers[1].name, (comp,)))
    return out


def population_gap(rows, spec, threshold):
    """The true accuracy gap to the capable tier on the recorded population (each row equally likely)."""
    cmap = spec.tiers[0].confidence.calibration_map()
    gap = sum(
        int(r.correct[1]) - int(r.correct[0]) for r in rows if r.raw[0] is not None and cmap(r.raw[0]) >= threshold
    )
    return gap / len(rows)


def test_tune_on_recorded_traffic_moves_in_bounded_certified_steps():
    """MMLU through gpt-4o-mini -> gpt-4o, the map fitted on train, production requests drawn from
    test. From a threshold no answer reaches, repeated runs (each on fresh traffic under the policy
    the previous run wrote) lower it by at most --max-step a run, and every policy tune certifies
    is within 1 point of gpt-4o on the recorded population; the lowering stops above the level
    that would lose more. From a threshold that loses 2.5 points, one run with a step large enough
    to reach a safe level raises it to one."""
    import needs
    from tierguard.calibration import fit_calibrations, with_confidence
    from tierguard.outcomes import load_dataset

    path = needs.shared_data()
    _, base = load_policy_spec(str(needs.REPO / "examples/replay/mmlu-2tier.yaml"))
    ds = load_dataset(path, base, benchmarks=["mmlu"])
    train, test = ds.select(split="train"), ds.select(split="test")
    fitted = with_confidence(base, calibrations=fit_calibrations(base, train))
    last = fitted.tiers[1].confidence.threshold
    rng = random.Random(21)

    spec = with_confidence(fitted, thresholds=[1.0, last])
    history = [1.0]
    for run in range(8):
        t = tune(spec, recorded_traffic(test, spec, 20000, rng, tag=f"a{run}"), eps=0.01, max_step=0.05)
        new = t.new_thresholds[0]
        assert abs(new - history[-1]) <= 0.05 + 1e-9
        if t.is_certified:
            assert population_gap(test, fitted, new) <= 0.01, (history, new)
        else:
            assert new == history[-1] and t.why_not()
        spec = t.spec
        history.append(new)
    assert history[-1] <= 0.9  # it came down ...
    assert population_gap(test, fitted, history[-1]) <= 0.01  # ... and stayed within one point
    assert sum(1 for r in test if fitted.tiers[0].confidence.calibration_map()(r.raw[0]) >= history[-1]) > 0.2 * len(test)

    losing = 0.65
    assert population_gap(test, fitted, losing) > 0.02
    spec = with_confidence(fitted, thresholds=[losing, last])
    t = tune(spec, recorded_traffic(test, spec, 20000, rng, tag="b"), eps=0.01, max_step=0.05)
    assert not t.is_certified and t.new_thresholds == (losing,)  # 0.70 still loses a point: kept
    t = tune(spec, recorded_traffic(test, spec, 20000, rng, tag="c"), eps=0.01, max_step=0.35)
    assert t.is_certified and t.new_thresholds[0] > losing
    assert population_gap(test, fitted, t.new_thresholds[0]) <= 0.01


# --- what the proxy records ---------------------------------------------------------------------


def test_comparisons_of_a_request_count_unknown_answers_as_disagreements():
    """The proxy's comparisons (tierguard.proxy.comparisons): text answers are compared with the
    capable tier's; a tool call refused for low confidence and an early-aborted stream have no
    text to compare and are recorded as disagreements (an early abort just below its threshold);
    calls escalated whatever the threshold are left out."""
    from tierguard.cascade import Judgement
    from tierguard.proxy.comparisons import compare_attempts
    from tierguard.proxy.outcome import Attempt

    spec = parse_policy_spec(THREE, "test")

    def attempt(tier, index, reason, raw, conf, answer=None):
        return Attempt(tier, judgement=Judgement(index, False, reason, raw, conf), answer=answer)

    attempts = [
        attempt("a", 0, "early_abort", 0.2, 0.2),
        attempt("b", 1, "low_confidence", 0.5, 0.55, answer=" Paris "),
        attempt("c", 2, "last_tier", None, None),
    ]
    rows = compare_attempts(
        response_id="r", policy="p", revision="r1", spec=spec, attempts=attempts, answered="c",
        served="paris", capable="paris", probability=0.5, source="escalation",
    )  # fmt: skip
    by = {r.tier: r for r in rows}
    assert set(by) == {"a", "b"}
    assert by["b"].agree and by["b"].confidence == 0.55 and by["b"].raw_confidence == 0.5
    assert not by["a"].agree and by["a"].confidence == pytest.approx(0.8) and by["a"].confidence < 0.8
    assert by["a"].raw_confidence is None
    assert all(r.probability == 0.5 and r.source == "escalation" and r.answered == "c" for r in rows)

    tool = [attempt("a", 0, "low_confidence", 0.6, 0.6), attempt("b", 1, "tool_call_rule", None, None)]
    tool[1].judgement = Judgement(1, True, "accepted", 0.9, 0.9)
    rows = compare_attempts(
        response_id="r", policy="p", revision="r1", spec=spec, attempts=tool, answered="b",
        served="X", capable="x", probability=0.1, source="shadow", cost_usd=0.02,
    )  # fmt: skip
    by = {r.tier: r for r in rows}
    assert not by["a"].agree and by["a"].confidence == 0.6 and by["a"].cost_usd == 0.0
    assert by["b"].agree and by["b"].cost_usd == 0.02  # the accepted answer paid for the shadow call
    failed = [attempt("a", 0, "tier_error", None, None), attempt("b", 1, "tool_call_rule", None, None)]
    assert compare_attempts(
        response_id="r", policy="p", revision="r1", spec=spec, attempts=failed, answered="c",
        served="x", capable="x", probability=1.0, source="escalation",
    ) == []  # fmt: skip
