"""The proxy's request checks (tierguard.proxy.requests), without a server."""

import pytest

from tierguard.proxy.requests import BadRequest, parse_feedback, validate_request

OK = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "max_tokens": 0}, "max_tokens"),
        ({**OK, "max_completion_tokens": True}, "max_completion_tokens"),
        ({**OK, "n": 2}, "n"),
        ({**OK, "user": 7}, "user"),
        ({**OK, "stream_options": []}, "stream_options"),
        ({**OK, "logprobs": "true"}, "logprobs"),
        ({**OK, "top_logprobs": 21}, "top_logprobs"),
        ({**OK, "temperature": "hot"}, "temperature"),
        ({**OK, "top_p": False}, "top_p"),
        # the ranges and types the OpenAI API enforces
        ({**OK, "temperature": 7}, "temperature"),
        ({**OK, "temperature": -0.1}, "temperature"),
        ({**OK, "top_p": 3}, "top_p"),
        ({**OK, "presence_penalty": 2.5}, "presence_penalty"),
        ({**OK, "frequency_penalty": -3}, "frequency_penalty"),
        ({**OK, "temperature": float("nan")}, "temperature"),
        ({**OK, "model": 4}, "model"),
        ({**OK, "seed": 1.5}, "seed"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**OK, "stop": [1]}, "stop"),
        ({**OK, "logit_bias": {"50256": 101}}, "logit_bias"),
        ({**OK, "logit_bias": []}, "logit_bias"),
        ({**OK, "response_format": "json"}, "response_format"),
        ({**OK, "tools": {}}, "tools"),
        ({**OK, "tool_choice": 1}, "tool_choice"),
    ],
)
def test_bad_requests_name_the_parameter(body, param):
    with pytest.raises(BadRequest) as err:
        validate_request(body)
    assert err.value.param == param and err.value.reason == "invalid_request"


def test_a_valid_request_comes_back_unchanged():
    body = {
        **OK,
        "stream": True,
        "max_tokens": 5,
        "n": 1,
        "logprobs": None,
        "top_logprobs": 0,
        "temperature": 0,
        "top_p": 1,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "seed": 3,
        "stop": ["\n", "END"],
        "logit_bias": {"50256": -100},
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "model": "any",
    }
    assert validate_request(body) is body


@pytest.mark.parametrize(
    ("body", "param"), [("up", None), ({"id": "x"}, "rating"), ({"rating": "meh"}, "rating")]
)
def test_feedback_needs_an_object_with_a_rating(body, param):
    with pytest.raises(BadRequest) as err:
        parse_feedback(body)
    assert err.value.param == param


def test_feedback_id_and_rating():
    assert parse_feedback({"id": "abc", "rating": "down"}) == ("abc", "down")
