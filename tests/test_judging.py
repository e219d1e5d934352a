"""Judging one tier's answer (tierguard.judging): pure, the same for live and recorded answers."""

import math

import pytest

from tierguard.cascade import raw_confidence
from tierguard.judging import (
    asks_self_eval,
    early_abort,
    failed_call,
    judge_answer,
    logprob_confidence,
    p_yes,
    recorded_raw_confidence,
    self_eval_request,
    wants_logprobs,
)
from tierguard.policy import CascadeSpec


def spec(thresholds=(0.8, 0.5), method="logprob", aggregate="min"):
    tiers = [
        {
            "name": f"t{i}",
            "baseUrl": f"http://127.0.0.1:{9000 + i}/v1",
            "model": f"m{i}",
            "confidence": {"threshold": t},
        }
        for i, t in enumerate(thresholds)
    ]
    return CascadeSpec.model_validate(
        {"tiers": tiers, "confidence": {"method": method, "aggregate": aggregate}}
    )


def verify_reply(*candidates, token=None, logprob=None):
    first = {
        "token": token,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in candidates],
    }
    return {"choices": [{"message": {"content": token or ""}, "logprobs": {"content": [first]}}]}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (verify_reply(("Y", math.log(0.7)), ("N", math.log(0.3))), 0.7),
        (verify_reply((" yes", math.log(0.6))), 0.6),  # case and white space do not matter
        (verify_reply(("N", math.log(0.25))), 0.75),  # no Y among the candidates: 1 - P(N)
        (verify_reply(("Y", math.log(0.4)), ("Y", math.log(0.9))), 0.4),  # the first Y counts
        (verify_reply(("Maybe", -0.1)), None),
        (verify_reply(("Y", "high")), None),  # not a number
        (verify_reply(token="Y", logprob=math.log(0.8)), 0.8),  # no top_logprobs: the token itself
        ({"choices": [{"message": {"content": "Y"}}]}, None),  # no logprobs at all
        ({"choices": []}, None),
    ],
)
def test_p_yes(reply, expected):
    got = p_yes(reply)
    assert got == (None if expected is None else pytest.approx(expected))


def test_p_yes_is_a_probability_even_when_a_provider_rounds_above_zero():
    assert p_yes(verify_reply(("Y", 1e-7))) == 1.0


def test_self_eval_request_appends_the_answer_and_the_question():
    req = {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0.7, "stream": True}
    q = self_eval_request(req, "4", "Correct? Y or N.")
    assert q["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Correct? Y or N."},
    ]
    assert (q["max_tokens"], q["logprobs"], q["top_logprobs"], q["temperature"]) == (1, True, 5, 0)
    assert "stream" not in q
    assert len(req["messages"]) == 1  # the client's request is left alone


def test_only_a_cheaper_tier_asks_itself():
    s = spec(method="self_eval")
    assert asks_self_eval(s, 0) and not asks_self_eval(s, 1)
    assert not wants_logprobs(s)
    assert not asks_self_eval(spec(), 0) and wants_logprobs(spec())


def test_logprob_confidence_aggregates_and_needs_tokens():
    s = spec(aggregate="min")
    assert logprob_confidence(s, [math.log(0.9), math.log(0.6)]) == pytest.approx(0.6)
    assert logprob_confidence(s, []) is None


def test_recorded_confidence_is_the_live_aggregation_of_one_token():
    s = spec(aggregate="quantile")
    assert recorded_raw_confidence(s, math.log(0.42)) == raw_confidence(s, [math.log(0.42)])
    assert recorded_raw_confidence(s, None) is None


@pytest.mark.parametrize(
    ("tier", "raw", "capable_only", "accepted", "reason"),
    [
        (0, 0.9, False, True, "accepted"),
        (0, 0.79, False, False, "low_confidence"),
        (0, None, False, False, "low_confidence"),
        (1, 0.1, False, True, "last_tier"),
        (1, None, False, True, "last_tier"),
        (1, 0.1, True, True, "capable_only"),
    ],
)
def test_judge_answer(tier, raw, capable_only, accepted, reason):
    j = judge_answer(spec(), tier, raw, capable_only=capable_only)
    assert (j.tier, j.accepted, j.reason, j.raw_confidence) == (tier, accepted, reason, raw)


def test_failed_call_escalates_except_on_the_last_tier():
    s = spec()
    assert (failed_call(s, 0).accepted, failed_call(s, 0).reason) == (False, "tier_error")
    assert (failed_call(s, 1).accepted, failed_call(s, 1).reason) == (True, "last_tier")


def test_early_abort_keeps_the_confidence_of_the_tokens_seen():
    j = early_abort(spec(aggregate="min"), 0, [math.log(0.9), math.log(0.3)])
    assert (j.accepted, j.reason) == (False, "early_abort")
    assert j.raw_confidence == pytest.approx(0.3)
    assert j.confidence == pytest.approx(0.3)  # no calibration map: the identity
