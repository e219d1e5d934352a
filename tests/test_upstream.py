"""Parsing of tier replies: anything unusable is a malformed reply (escalation), never a crash."""

import pytest

from tierguard.proxy.upstream import StreamState, TierFailure, _absorb, _usage, token_logprobs


def test_logprobs_parsed():
    choice = {"logprobs": {"content": [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": 0}]}}
    assert token_logprobs(choice) == [-0.1, 0.0]
    assert token_logprobs({}) == []
    assert token_logprobs({"logprobs": None}) == []


@pytest.mark.parametrize(
    "logprobs",
    [
        {"content": [{"token": "A", "logprob": None}]},
        {"content": [{"token": "A", "logprob": "x"}]},
        {"content": [{"token": "A", "logprob": 3.0}]},
        {"content": ["A"]},
        {"content": "A"},
    ],
)
def test_malformed_logprobs_raise(logprobs):
    with pytest.raises(ValueError):
        token_logprobs({"logprobs": logprobs})


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": "many"}, {"completion_tokens": -1}, "x", {"prompt_tokens": 1.5}]
)
def test_malformed_usage_raises(usage):
    with pytest.raises(ValueError):
        _usage({"usage": usage})


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices": ["x"]}',
        b'data: {"choices": "x"}',
        b'data: {"choices": [{"delta": {"content": "a"}, "logprobs": {"content": [{"logprob": null}]}}]}',
        b'data: {"usage": {"prompt_tokens": "many"}}',
        b"data: [1, 2]",
        b"data: {not json",
    ],
)
def test_malformed_stream_chunks_are_tier_failures(event):
    with pytest.raises(TierFailure) as err:
        _absorb(event, StreamState())
    assert err.value.kind == "malformed"


def test_stream_chunk_absorbed():
    state = StreamState()
    ev = b'data: {"choices": [{"delta": {"content": "hi"}, "logprobs": {"content": [{"logprob": -0.5}]}}]}'
    assert _absorb(ev, state)
    assert (state.text, state.logprobs) == (["hi"], [-0.5])
    assert not _absorb(b"data: [DONE]", state)
