import math

import pytest

from tierguard.cascade import acceptance_impossible, judge, route
from tierguard.policy import CascadeSpec


def spec(thresholds, aggregate="quantile", calibration=None, early_abort=True):
    tiers = []
    for i, t in enumerate(thresholds):
        conf = {"threshold": t}
        if calibration and i < len(calibration) and calibration[i]:
            conf["calibration"] = calibration[i]
        tiers.append(
            {
                "name": f"t{i}",
                "baseUrl": f"http://127.0.0.1:{9000 + i}/v1",
                "model": f"m{i}",
                "confidence": conf,
            }
        )
    return CascadeSpec.model_validate(
        {"tiers": tiers, "confidence": {"aggregate": aggregate, "earlyAbort": early_abort}}
    )


@pytest.mark.parametrize(
    ("raw", "answered", "reasons"),
    [
        ([0.9, 0.1, 0.1], 0, ["accepted"]),
        ([0.8, 0.1, 0.1], 0, ["accepted"]),  # at the threshold: accepted
        ([0.79, 0.9, 0.1], 1, ["low_confidence", "accepted"]),
        ([0.1, 0.2, 0.0], 2, ["low_confidence", "low_confidence", "last_tier"]),
        ([None, 0.95, 0.5], 1, ["low_confidence", "accepted"]),  # no confidence: cannot accept
    ],
)
def test_route_three_tiers(raw, answered, reasons):
    r = route(spec([0.8, 0.9, 0.5]), raw)
    assert r.answered_by == answered
    assert [j.reason for j in r.judgements] == reasons


def test_tier_error_escalates_and_last_tier_always_answers():
    r = route(spec([0.1, 0.1]), [0.99, None], errors=[True, True])
    assert [j.reason for j in r.judgements] == ["tier_error", "last_tier"]
    assert r.answered_by == 1


def test_calibration_applies_before_threshold():
    # raw 0.9 maps to 0.45 (< 0.5): escalate although the raw score is high
    s = spec([0.5, 0.5], calibration=[[[0.0, 0.0], [1.0, 0.5]]])
    j = judge(s, 0, 0.9)
    assert not j.accepted
    assert j.confidence == pytest.approx(0.45)
    assert judge(s, 0, 1.0).accepted


def test_route_needs_one_confidence_per_tier():
    with pytest.raises(ValueError):
        route(spec([0.5, 0.5]), [0.9])


def test_early_abort_min():
    s = spec([0.6, 0.5], aggregate="min")
    assert acceptance_impossible(s, 0, [math.log(0.5)], 100)
    assert not acceptance_impossible(s, 0, [math.log(0.7)], 100)


def test_early_abort_quantile_depends_on_length_bound():
    s = spec([0.6, 0.5], aggregate="quantile")
    seen = [math.log(0.3)] * 3
    assert acceptance_impossible(s, 0, seen, max_tokens=5)  # 3 of 5 doubtful: hopeless
    assert not acceptance_impossible(s, 0, seen, max_tokens=200)  # 197 certain tokens could still come


def test_no_early_abort_on_last_tier_or_when_disabled():
    assert not acceptance_impossible(spec([0.6, 0.5], "min"), 1, [math.log(0.01)], 10)
    assert not acceptance_impossible(spec([0.6, 0.5], "min", early_abort=False), 0, [math.log(0.01)], 10)
