"""`tierguard sim` as a real process on loopback: answers, logprobs, streaming, faults, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from needs import shared_data
from procs import REPO, RunningProcess, child_env, start_sim, write_outcomes
from tierguard.confidence import aggregate
from tierguard.outcomes import load_outcomes
from tierguard.sim.data import (
    CARRIER_SHARE,
    NULL_CONF_PROB,
    carrier_positions,
    token_logprobs,
    tokenize,
    unknown_reply,
)

SYSTEM = "Answer with a single letter."
LONG_ANSWER = "Step one: add 2 and 3. " + " ".join(f"w{i}" for i in range(30)) + ". The answer is 5."


def outcome(answer: str, conf: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "answer": answer,
        "correct": True,
        "conf_logprob": None if conf is None else math.log(conf),
        "latency_ms": 100.0,
        "tokens_in": 50,
        "tokens_out": len(tokenize(answer)),
        **extra,
    }


ROWS: list[dict[str, Any] | str] = [
    {
        "qid": "mcq",
        "system_prompt": SYSTEM,
        "user_prompt": "Which letter?\nA: x\nB: y",
        "models": {"m1": outcome("B", 0.7, tokens_in=57, tokens_out=1), "m2": outcome("A", 0.9)},
    },
    {"qid": "long", "user_prompt": "Add 2 and 3.", "models": {"m1": outcome(LONG_ANSWER, 0.3)}},
    {"qid": "sure", "user_prompt": "Is the sky blue?", "models": {"m1": outcome("Yes.", 0.95)}},
    {"qid": "doubt", "user_prompt": "Is it raining on Mars?", "models": {"m1": outcome("No.", 0.2)}},
    {"qid": "noconf", "user_prompt": "No confidence here.", "models": {"m1": outcome("Maybe", None)}},
    {"qid": "other", "user_prompt": "Only m2 knows.", "models": {"m2": outcome("C", 0.5)}},
    {"qid": "empty", "user_prompt": "Say nothing.", "models": {"m1": outcome("", 0.6)}},
    '{"qid": "broken", "user_prompt": ',  # malformed: line 8, skipped with a message
    {"qid": "nomodels", "user_prompt": "x", "models": {}},  # invalid: line 9
]
EXPECTED = {  # prompt -> (answer, confidence) for m1
    "long": (LONG_ANSWER, 0.3),
    "sure": ("Yes.", 0.95),
    "doubt": ("No.", 0.2),
}
PROMPTS = {r["qid"]: r["user_prompt"] for r in ROWS if isinstance(r, dict)}


def chat(user: str, system: str | None = None, model: str = "m1", **extra: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    return {"model": model, "messages": messages, **extra}


def post(sim: RunningProcess, body: Any, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{sim.url}/chat/completions", json=body, timeout=timeout)


def logprobs_of(body: dict[str, Any]) -> list[float]:
    return [t["logprob"] for t in body["choices"][0]["logprobs"]["content"]]


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    out = []
    for ev in events:
        assert ev.startswith("data: "), ev
        out.append(ev[len("data: ") :])
    return out


def stats(sim: RunningProcess) -> dict[str, Any]:
    r = httpx.get(f"{sim.base}/admin/stats")
    assert r.status_code == 200
    return dict(r.json())


def wait_for_stat(sim: RunningProcess, key: str, at_least: int, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    value = int(stats(sim)[key])
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = int(stats(sim)[key])
    return value


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_outcomes(tmp_path_factory.mktemp("sim") / "outcomes.jsonl", ROWS)


@pytest.fixture(scope="module")
def sim(data_file: Path) -> Iterator[RunningProcess]:
    with start_sim(data_file, "m1", latency_scale=0, seed=1) as p:
        yield p


# --- pure parts ----------------------------------------------------------------------------------


def test_tokenize_round_trips_and_keeps_a_letter_whole() -> None:
    for text in ("B", " B", "The answer is 42.\n\nDone. ", "", "naïve café — ok?", LONG_ANSWER):
        assert "".join(tokenize(text)) == text
    assert tokenize("B") == ["B"]
    assert tokenize("The answer is 42.") == ["The", " answer", " is", " 42", "."]


@pytest.mark.parametrize("n", [*range(1, 60), 99, 100, 101, 250, 1000])
def test_carriers_make_min_and_low_quantiles_exact(n: int) -> None:
    pos = carrier_positions(n)
    assert pos[0] == 0 and len(pos) >= CARRIER_SHARE * n and len(set(pos)) == len(pos)
    for p in (0.01, 0.3, 0.5, 0.9, 0.9995, 1.0):
        lps = token_logprobs(n, math.log(p))
        assert aggregate(lps, "min") == pytest.approx(p, abs=1e-12)
        for q in (0.0, 0.05, 0.1, 0.15, 0.2):
            assert aggregate(lps, "quantile", q) == pytest.approx(p, abs=1e-12), (n, p, q)


def test_unknown_reply_is_a_pure_function_of_the_prompt() -> None:
    a, b = unknown_reply("sys", "hello  world", 500.0), unknown_reply("sys", "hello world", 500.0)
    assert a.text == b.text and a.logprobs == b.logprobs  # whitespace-normalised
    c = unknown_reply("sys", "hello world!", 500.0)
    assert c.text != a.text
    assert 0.05 <= math.exp(a.conf_logprob) < 0.95


# --- the served API --------------------------------------------------------------------------------


def test_recorded_answer_usage_and_lookup(sim: RunningProcess) -> None:
    r = post(sim, chat(PROMPTS["mcq"], SYSTEM))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "m1"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "B", "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 57, "completion_tokens": 1, "total_tokens": 58}

    # whitespace differences do not matter; a different system prompt falls back to the user prompt
    assert (
        post(sim, chat("Which   letter?\n A: x\nB: y", "Answer with   a single letter.")).json()["choices"][
            0
        ]["message"]["content"]
        == "B"
    )
    assert post(sim, chat(PROMPTS["mcq"])).json()["choices"][0]["message"]["content"] == "B"
    # content parts are read like a string
    parts = {"role": "user", "content": [{"type": "text", "text": PROMPTS["long"]}]}
    r = post(sim, {"model": "m1", "messages": [parts]})
    assert r.json()["choices"][0]["message"]["content"] == LONG_ANSWER
    # a row of another model is not served by m1
    before = stats(sim)["unknown_prompts"]
    assert post(sim, chat(PROMPTS["other"])).json()["choices"][0]["message"]["content"] != "C"
    assert stats(sim)["unknown_prompts"] == before + 1


@pytest.mark.parametrize("qid", sorted(EXPECTED))
def test_logprobs_reproduce_the_recorded_confidence(sim: RunningProcess, qid: str) -> None:
    answer, conf = EXPECTED[qid]
    r = post(sim, chat(PROMPTS[qid], logprobs=True, top_logprobs=3))
    body = r.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == answer == body["choices"][0]["message"]["content"]
    lps = logprobs_of(body)
    assert aggregate(lps, "min") == pytest.approx(conf, abs=1e-9)
    assert aggregate(lps, "quantile", 0.1) == pytest.approx(conf, abs=1e-9)
    assert lps[0] == pytest.approx(math.log(conf))
    for t in content:
        assert t["bytes"] == list(t["token"].encode())
        tops = t["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == t["token"] and tops[0]["logprob"] == t["logprob"]
        assert [x["logprob"] for x in tops] == sorted((x["logprob"] for x in tops), reverse=True)
        assert sum(math.exp(x["logprob"]) for x in tops) <= 1.0 + 1e-9
    # without top_logprobs the lists are empty, as in OpenAI's API
    plain = post(sim, chat(PROMPTS[qid], logprobs=True)).json()
    assert all(t["top_logprobs"] == [] for t in plain["choices"][0]["logprobs"]["content"])


def test_null_confidence_is_served_low(sim: RunningProcess) -> None:
    body = post(sim, chat(PROMPTS["noconf"], logprobs=True)).json()
    assert body["choices"][0]["message"]["content"] == "Maybe"
    assert aggregate(logprobs_of(body), "min") == pytest.approx(NULL_CONF_PROB)


def test_mcq_alternatives_are_other_letters(sim: RunningProcess) -> None:
    body = post(sim, chat(PROMPTS["mcq"], SYSTEM, logprobs=True, top_logprobs=4)).json()
    tops = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in tops] == ["B", "A", "C", "D"]
    assert tops[0]["logprob"] == pytest.approx(math.log(0.7))


def test_streaming_format_usage_and_logprobs(sim: RunningProcess) -> None:
    answer, conf = EXPECTED["long"]
    body = chat(PROMPTS["long"], stream=True, stream_options={"include_usage": True}, logprobs=True)
    r = post(sim, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"m1"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    n_tokens = len(tokenize(answer))
    assert usage_chunk["usage"] == {
        "prompt_tokens": 50,
        "completion_tokens": n_tokens,
        "total_tokens": 50 + n_tokens,
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    choices = [c["choices"][0] for c in chunks[:-1]]
    assert choices[-1]["finish_reason"] == "stop" and choices[-1]["delta"] == {}
    assert all(ch["finish_reason"] is None for ch in choices[:-1])
    token_chunks = [ch for ch in choices if ch["delta"].get("content")]
    assert "".join(ch["delta"]["content"] for ch in token_chunks) == answer
    assert all(len(ch["logprobs"]["content"]) == 1 for ch in token_chunks)  # one token per chunk
    lps = [ch["logprobs"]["content"][0]["logprob"] for ch in token_chunks]
    assert aggregate(lps, "min") == pytest.approx(conf) and aggregate(lps, "quantile", 0.1) == pytest.approx(
        conf
    )

    # without include_usage: no usage key at all, and no logprobs unless asked
    r = post(sim, chat(PROMPTS["sure"], stream=True))
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Yes."


def test_max_tokens_truncates(sim: RunningProcess) -> None:
    body = post(sim, chat(PROMPTS["long"], max_tokens=3, logprobs=True)).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "".join(tokenize(LONG_ANSWER)[:3])
    assert len(choice["logprobs"]["content"]) == 3 and body["usage"]["completion_tokens"] == 3


def test_an_empty_answer_is_served_without_tokens(sim: RunningProcess) -> None:
    body = post(sim, chat(PROMPTS["empty"], logprobs=True)).json()
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["logprobs"]["content"] == []
    r = post(sim, chat(PROMPTS["empty"], stream=True, logprobs=True))
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]


def verification(user: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m1",
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Is your answer above correct? Answer with a single letter: Y or N."},
        ],
        "max_tokens": 1,
        **extra,
    }


@pytest.mark.parametrize(("qid", "token"), [("sure", "Y"), ("doubt", "N"), ("long", "N")])
def test_self_verification_answers_y_or_n_with_consistent_logprobs(
    sim: RunningProcess, qid: str, token: str
) -> None:
    answer, p = EXPECTED[qid]
    before = stats(sim)["self_eval"]
    body = post(sim, verification(PROMPTS[qid], answer, logprobs=True, top_logprobs=5)).json()
    assert body["choices"][0]["message"]["content"] == token
    entry = body["choices"][0]["logprobs"]["content"][0]
    tops = {t["token"]: t["logprob"] for t in entry["top_logprobs"]}
    assert set(tops) == {"Y", "N"}
    assert tops["Y"] == pytest.approx(math.log(p)) and tops["N"] == pytest.approx(math.log(1 - p))
    assert entry["token"] == token and entry["logprob"] == tops[token]
    assert entry["top_logprobs"][0]["token"] == token
    assert stats(sim)["self_eval"] == before + 1
    # with top_logprobs=1 only the chosen token is listed, its logprob still consistent with p
    one = post(sim, verification(PROMPTS[qid], answer, logprobs=True, top_logprobs=1)).json()
    assert [t["token"] for t in one["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == [token]
    # streamed, the same single token
    r = post(sim, verification(PROMPTS[qid], answer, logprobs=True, top_logprobs=2, stream=True))
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    streamed = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(streamed) == 1 and streamed[0]["delta"]["content"] == token
    assert streamed[0]["logprobs"]["content"][0]["top_logprobs"] == entry["top_logprobs"]


def test_unknown_prompt_is_deterministic(sim: RunningProcess) -> None:
    before = stats(sim)["unknown_prompts"]
    a = post(sim, chat("never recorded", logprobs=True)).json()
    b = post(sim, chat("never   recorded", logprobs=True)).json()
    c = post(sim, chat("never recorded either", logprobs=True)).json()
    text = a["choices"][0]["message"]["content"]
    assert text == b["choices"][0]["message"]["content"] != c["choices"][0]["message"]["content"]
    assert logprobs_of(a) == logprobs_of(b)
    expected = unknown_reply("", "never recorded", 100.0)  # the same rule as in the server
    assert text == expected.text
    assert aggregate(logprobs_of(a), "min") == pytest.approx(math.exp(expected.conf_logprob))
    assert a["usage"]["completion_tokens"] == len(tokenize(text))
    assert stats(sim)["unknown_prompts"] == before + 3


def test_models_health_and_model_errors(sim: RunningProcess) -> None:
    models = httpx.get(f"{sim.url}/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["m1"]
    assert httpx.get(f"{sim.url}/models/m1").json()["id"] == "m1"
    assert httpx.get(f"{sim.url}/models/m2").status_code == 404
    health = httpx.get(f"{sim.base}/healthz").json()
    assert health == {"status": "ok", "model": "m1", "prompts": 6}

    r = post(sim, chat("hi", model="gpt-5"))
    assert r.status_code == 404
    assert (
        r.json()["error"]["code"] == "model_not_found"
        and r.json()["error"]["type"] == "invalid_request_error"
    )
    assert "gpt-5" in r.json()["error"]["message"]


BAD_REQUESTS: list[tuple[Any, str | None]] = [
    ([], None),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": 3, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m1"}, "messages"),
    ({"model": "m1", "messages": []}, "messages"),
    ({"model": "m1", "messages": "hi"}, "messages"),
    ({"model": "m1", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m1", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": "m1", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m1", "messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({**chat("hi"), "stream": "yes"}, "stream"),
    ({**chat("hi"), "logprobs": 1}, "logprobs"),
    ({**chat("hi"), "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({**chat("hi"), "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({**chat("hi"), "top_logprobs": 2}, "top_logprobs"),
    ({**chat("hi"), "max_tokens": 0}, "max_tokens"),
    ({**chat("hi"), "max_tokens": 2.5}, "max_tokens"),
    ({**chat("hi"), "n": 2}, "n"),
    ({**chat("hi"), "stream_options": {"include_usage": True}}, "stream_options"),
    ({**chat("hi"), "stream": True, "stream_options": {"include_usage": "yes"}}, "include_usage"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_400s(sim: RunningProcess, body: Any, param: str | None) -> None:
    r = post(sim, body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert "Traceback" not in r.text


def test_unparseable_and_unrouted_requests(sim: RunningProcess) -> None:
    r = httpx.post(f"{sim.url}/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{sim.url}/completions", json={}, timeout=10)
    assert r.status_code == 404 and "Invalid URL" in r.json()["error"]["message"]
    r = httpx.get(f"{sim.url}/chat/completions", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert stats(sim)["bad_requests"] >= 1


def test_fault_injection_from_the_command_line_and_at_run_time(data_file: Path) -> None:
    with start_sim(data_file, "m1", latency_scale=0, error_rate=1, error_status=503, seed=7) as s:
        r = post(s, chat(PROMPTS["sure"]))
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        faults = httpx.get(f"{s.base}/admin/faults").json()
        assert faults["error_rate"] == 1.0 and faults["error_status"] == 503

        r = httpx.post(f"{s.base}/admin/faults", json={"error_status": 429})
        assert r.status_code == 200 and r.json()["error_status"] == 429
        r = post(s, chat(PROMPTS["sure"], stream=True))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"

        assert httpx.post(f"{s.base}/admin/faults", json={"error_rate": 0}).status_code == 200
        assert post(s, chat(PROMPTS["sure"])).status_code == 200

        # half the requests fail with a fixed seed: some of both kinds
        httpx.post(f"{s.base}/admin/faults", json={"error_rate": 0.5, "error_status": 500})
        codes = {post(s, chat(PROMPTS["sure"])).status_code for _ in range(40)}
        assert codes == {200, 500}
        assert stats(s)["injected_errors"] >= 3

        for bad in ({"error_rate": 2}, {"error_status": 200}, {"latency_scale": -1}, {"bogus": 1},
                    {"error_rate": "high"}, [1]):  # fmt: skip
            r = httpx.post(f"{s.base}/admin/faults", json=bad)
            assert r.status_code == 400 and r.json()["error"]["message"]
        assert httpx.get(f"{s.base}/admin/faults").json()["error_rate"] == 0.5  # unchanged

        assert httpx.post(f"{s.base}/admin/stats/reset").json()["requests"] == 0


def test_hanging_requests_and_disconnects_are_counted(data_file: Path) -> None:
    # 100 ms recorded x 30 = 3 s per answer, streamed over the long answer's tokens
    with start_sim(data_file, "m1", latency_scale=30) as s:
        n_tokens = len(tokenize(LONG_ANSWER))
        with httpx.stream("POST", f"{s.url}/chat/completions", json=chat(PROMPTS["long"], stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break  # the first token arrived: hang up
        assert wait_for_stat(s, "streams_cancelled", 1) == 1
        st = stats(s)
        assert st["streams_completed"] == 0 and 1 <= st["cancelled_stream_tokens_sent"] < n_tokens

        # a non-streaming answer the client stops waiting for
        with pytest.raises(httpx.ReadTimeout):
            post(s, chat(PROMPTS["sure"]), timeout=0.3)
        assert wait_for_stat(s, "completions_cancelled", 1) == 1

        # an injected hang lasts until the client gives up
        httpx.post(f"{s.base}/admin/faults", json={"timeout_rate": 1, "latency_scale": 0})
        with pytest.raises(httpx.ReadTimeout):
            post(s, chat(PROMPTS["sure"]), timeout=0.3)
        assert stats(s)["injected_timeouts"] == 1
        assert wait_for_stat(s, "completions_cancelled", 2) == 2

        # a short hang ends in a 504
        httpx.post(f"{s.base}/admin/faults", json={"hang_seconds": 0.05})
        r = post(s, chat(PROMPTS["sure"]))
        assert r.status_code == 504 and r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while stats(s)["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats(s)["in_flight"] == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierguard", "sim", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_unknown_model_is_a_clear_cli_error(data_file: Path) -> None:
    r = run_cli("--data", str(data_file), "--model", "gpt-9", "--port", "0")
    assert r.returncode == 2
    assert "model 'gpt-9' is not in" in r.stderr and "models in the file: m1, m2" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "line 8: not valid JSON" in r.stderr and "skipped 2 malformed line(s)" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/o.jsonl", "--model", "m1"], "no such file"),
        (["--model", "m1", "--error-rate", "1.5"], "--error-rate must be between 0 and 1"),
        (["--model", "m1", "--error-status", "200"], "--error-status must be an HTTP error status"),
        (["--model", "m1", "--latency-scale", "-2"], "--latency-scale must be a finite number >= 0"),
    ],
)
def test_bad_command_lines(data_file: Path, args: list[str], message: str) -> None:
    full = args if "--data" in args else ["--data", str(data_file), *args]
    r = run_cli(*full)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_malformed_rows_are_reported_and_served_rows_counted(sim: RunningProcess) -> None:
    log = sim.log_text()
    assert "skipped 2 malformed line(s)" in log and "line 8:" in log and "line 9: models" in log
    assert "serving m1 from " in log and "(6 prompts) on http://127.0.0.1:" in log


# --- the shared real data --------------------------------------------------------------------------


def test_serves_the_recorded_zellinger_outcomes() -> None:
    shared = shared_data()
    outcomes = load_outcomes(shared)
    model = "gpt-4o-mini"
    rows = [r for r in outcomes.records if model in r.models]
    sample = rows[:: max(1, len(rows) // 60)]
    assert {r.benchmark for r in sample} >= {"mmlu", "medmcqa", "gsm8k"}  # one-letter and long answers
    with start_sim(shared, model, latency_scale=0) as s:
        assert httpx.get(f"{s.base}/healthz").json()["prompts"] == len(
            {(" ".join((r.system_prompt or "").split()), " ".join(r.user_prompt.split())) for r in rows}
        )
        for rec in sample:
            o = rec.models[model]
            body = post(s, chat(rec.user_prompt, rec.system_prompt, model=model, logprobs=True)).json()
            served = body["choices"][0]["message"]["content"]
            if served != o.answer:  # a repeated prompt: the first row with it is served
                twin = next(
                    r
                    for r in rows
                    if r.user_prompt == rec.user_prompt and r.system_prompt == rec.system_prompt
                )
                o = twin.models[model]
            assert served == o.answer
            assert body["usage"]["prompt_tokens"] == o.tokens_in
            assert body["usage"]["completion_tokens"] == o.tokens_out
            expected = NULL_CONF_PROB if o.conf_logprob is None else math.exp(o.conf_logprob)
            lps = logprobs_of(body)
            assert aggregate(lps, "quantile", 0.1) == pytest.approx(expected, abs=1e-9)
            assert aggregate(lps, "min") == pytest.approx(expected, abs=1e-9)
        assert stats(s)["unknown_prompts"] == 0
