"""The proxy's request parsing and feedback endpoint under hostile input (hypothesis), against a
real proxy process: every answer is a 200 or a 4xx with an OpenAI-style error body, never a 5xx,
never a traceback; the proxy stays up. Huge bodies, deep JSON, wrong types, non-UTF-8, duplicate
keys, forged, replayed and tampered response ids."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procs import RunningProcess, start_proxy, start_sim, write_outcomes
from test_proxy import MODELS, ROWS, cascade, write_policy

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

CLIENT = httpx.Client(timeout=30)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    d = tmp_path_factory.mktemp("fuzz")
    data = write_outcomes(d / "o.jsonl", ROWS)
    sims = {m: start_sim(data, m, latency_scale=0) for m in MODELS}
    spec = cascade(sims)
    p = start_proxy(
        write_policy(d / "p.yaml", spec), decision_log="off", env={"TIERGUARD_FEEDBACK_KEY": "fuzz"}
    )
    yield p
    p.stop()
    for s in sims.values():
        s.stop()


def check(r: httpx.Response) -> None:
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code != 200:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["type"] == "invalid_request_error", err
    assert "Traceback" not in r.text


def send(proxy: RunningProcess, path: str, raw: bytes) -> httpx.Response:
    r = CLIENT.post(f"{proxy.base}{path}", content=raw, headers={"content-type": "application/json"})
    check(r)
    return r


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=25,
)
FIELDS = ["messages", "stream", "max_tokens", "n", "user", "stream_options", "logprobs", "top_logprobs",
          "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "logit_bias",
          "response_format", "tools", "tool_choice", "model", "max_completion_tokens"]  # fmt: skip
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
    lambda d: {"messages": [{"role": "user", "content": "easy question"}], **d}
)


@FUZZ
@given(bodies)
def test_chat_with_any_field_values(proxy: RunningProcess, body: dict[str, Any]) -> None:
    body.pop("stream", None)  # streaming answers are 200 SSE; covered below with valid bodies
    send(proxy, "/v1/chat/completions", json.dumps(body).encode())


@FUZZ
@given(st.binary(max_size=400))
def test_chat_with_any_bytes(proxy: RunningProcess, raw: bytes) -> None:
    send(proxy, "/v1/chat/completions", raw)


@FUZZ
@given(json_values)
def test_feedback_with_any_body(proxy: RunningProcess, body: Any) -> None:
    r = send(proxy, "/v1/feedback", json.dumps(body).encode())
    assert r.status_code != 200  # nothing here is a response id the proxy signed


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 20000 + b"]" * 20000,
        b'{"messages":' + b"[" * 20000 + b"]" * 20000 + b"}",
        b'{"messages": [{"role": "user", "content": ' + b"[" * 900 + b"]" * 900 + b"}]}",
        b'{"messages": [{"role": "user", "content": "x"}], "messages": 5}',  # duplicate keys: the last wins
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',  # not UTF-8
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
        b"x" * (1 << 20) + b"x",  # over maxBodyBytes (1 MiB by default)
        b"",
    ],
)
def test_pathological_bodies(proxy: RunningProcess, raw: bytes) -> None:
    send(proxy, "/v1/chat/completions", raw)
    send(proxy, "/v1/feedback", raw)


def test_forged_replayed_and_tampered_ids(proxy: RunningProcess) -> None:
    r = CLIENT.post(
        f"{proxy.url}/chat/completions", json={"messages": [{"role": "user", "content": "medium question"}]}
    )
    assert r.status_code == 200 and r.headers["x-tierguard-tier"] == "mid"
    rid = r.json()["id"]
    prefix, payload, mac = rid.split(".")
    claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    other = claims.replace("|mid|", "|cheap|")  # attribute the answer to a tier that did not give it
    assert other != claims
    tampered = f"{prefix}.{base64.urlsafe_b64encode(other.encode()).decode().rstrip('=')}.{mac}"
    for forged in (tampered, f"{prefix}.{payload}.{mac[:-2]}AA", rid + "x", rid.upper()):
        f = CLIENT.post(f"{proxy.url}/feedback", json={"id": forged, "rating": "down"})
        check(f)
        assert f.status_code == 400 and f.json()["error"]["param"] == "id", f.text
    ok = CLIENT.post(f"{proxy.url}/feedback", json={"id": rid, "rating": "down"})
    assert ok.status_code == 200 and ok.json()["tier"] == "mid"
    replay = CLIENT.post(f"{proxy.url}/feedback", json={"id": rid, "rating": "up"})
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "duplicate"


def test_the_proxy_is_still_up(proxy: RunningProcess) -> None:
    assert proxy.alive()
    assert CLIENT.get(f"{proxy.base}/readyz").status_code == 200
