"""Agent traffic in the outcomes format, the simulator, the synthetic workload and replay.

The simulator runs as a real process; the workload is generated from a seed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import child_env, start_sim, write_outcomes
from tierguard.confidence import aggregate
from tierguard.judging import check_answer
from tierguard.outcomes import OutcomeRecord, align, conversation_key, load_outcomes
from tierguard.policy import load_policy_spec
from tierguard.toolcalls import StreamedToolCalls, ToolCall, message_tool_calls, verification_messages
from tierguard.workload import CAPABLE, CHEAP, TOOLS, generate

REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are support."}
ASK = {"role": "user", "content": "Where is order A1234?"}
CALL = {"name": "lookup_order", "arguments": '{"order_id": "A1234"}'}
TURN1 = [
    SYSTEM,
    ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_x", "type": "function", "function": CALL}],
    },
    {"role": "tool", "tool_call_id": "call_x", "content": '{"status": "shipped"}'},
]


def outcome(conf: float, **extra: Any) -> dict[str, Any]:
    return {"correct": True, "conf_logprob": math.log(conf), "latency_ms": 0.0, "tokens_in": 80, **extra}


ROWS = [
    {
        "qid": "t0",
        "conversation_id": "c1",
        "turn": 0,
        "messages": [SYSTEM, ASK],
        "tools": TOOLS,
        "models": {"m": outcome(0.9, tool_calls=[CALL])},
    },
    {
        "qid": "t1",
        "conversation_id": "c1",
        "turn": 1,
        "messages": TURN1,
        "tools": TOOLS,
        "models": {"m": outcome(0.3, answer="It has shipped.")},
    },
    # a single-turn row with the same first user message: still served for single-turn requests
    {
        "qid": "single",
        "system_prompt": "You are support.",
        "user_prompt": "Where is order A1234?",
        "models": {"m": outcome(0.6, answer="Let me check.")},
    },
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    path = write_outcomes(tmp_path_factory.mktemp("agent") / "o.jsonl", ROWS)
    with start_sim(path, "m", latency_scale=0) as proc:
        yield proc


@pytest.fixture(scope="module")
def sim_vllm(tmp_path_factory):
    path = write_outcomes(tmp_path_factory.mktemp("agent-vllm") / "o.jsonl", ROWS)
    with start_sim(path, "m", latency_scale=0, tool_call_logprobs=True) as proc:
        yield proc


def chat(sim, messages, **extra):
    r = httpx.post(
        f"{sim.url}/chat/completions", json={"model": "m", "messages": messages, **extra}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(sim, messages, **extra):
    body = {"model": "m", "messages": messages, "stream": True, **extra}
    with httpx.stream("POST", f"{sim.url}/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def test_outcome_rows_take_prompts_from_messages_and_answers_may_be_calls():
    rec = OutcomeRecord.model_validate(ROWS[1])
    assert rec.user_prompt == "Where is order A1234?" and rec.system_prompt == "You are support."
    call_rec = OutcomeRecord.model_validate(ROWS[0])
    assert call_rec.has_tool_calls and call_rec.models["m"].answer == ""
    assert call_rec.models["m"].as_text() == 'lookup_order({"order_id":"A1234"})'
    with pytest.raises(ValueError, match="answer"):
        OutcomeRecord.model_validate({"user_prompt": "x", "models": {"m": {"correct": True}}})
    with pytest.raises(ValueError, match="role 'user'"):
        OutcomeRecord.model_validate({"messages": [SYSTEM], "models": {"m": {"answer": "x"}}})


def test_conversation_key_ignores_ids_and_whitespace_but_not_arguments():
    same = json.loads(json.dumps(TURN1))
    same[2]["tool_calls"][0]["id"] = "call_other"
    same[3]["tool_call_id"] = "call_other"
    same[2]["tool_calls"][0]["function"]["arguments"] = '{ "order_id" : "A1234" }'
    same[1]["content"] = "Where is   order A1234?"
    assert conversation_key(same) == conversation_key(TURN1)
    other = json.loads(json.dumps(TURN1))
    other[2]["tool_calls"][0]["function"]["arguments"] = '{"order_id": "A9999"}'
    assert conversation_key(other) != conversation_key(TURN1)


def test_sim_answers_a_recorded_turn_with_a_tool_call(sim):
    body = chat(sim, [SYSTEM, ASK], tools=TOOLS, logprobs=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = message_tool_calls(choice["message"])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("lookup_order", {"order_id": "A1234"})]
    assert choice["message"]["tool_calls"][0]["id"].startswith("call_")
    assert choice["logprobs"] is None  # as OpenAI: no logprobs for tool-call tokens


def test_sim_answers_the_next_turn_of_the_conversation(sim):
    body = chat(sim, TURN1, logprobs=True)
    assert body["choices"][0]["message"]["content"] == "It has shipped."
    lps = [t["logprob"] for t in body["choices"][0]["logprobs"]["content"]]
    assert aggregate(lps, "min") == pytest.approx(0.3)
    # without the conversation's later turns, a single-turn request finds the single-turn row
    assert chat(sim, [{"role": "user", "content": "Where is order A1234?"}])["choices"][0]["message"][
        "content"
    ] in ("Let me check.",)


def test_sim_verifies_a_proposed_tool_call(sim):
    msgs = verification_messages([SYSTEM, ASK], TOOLS, [ToolCall("", CALL["name"], CALL["arguments"])])
    body = chat(sim, msgs, logprobs=True, top_logprobs=2, max_tokens=1)
    first = body["choices"][0]["logprobs"]["content"][0]
    assert first["token"] == "Y"
    assert math.exp(first["logprob"]) == pytest.approx(0.9)


def test_sim_streams_a_tool_call_in_openai_chunks(sim):
    events = stream_events(sim, [SYSTEM, ASK], tools=TOOLS, stream_options={"include_usage": True})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": None}
    acc = StreamedToolCalls()
    for ev in events[1:]:
        for ch in ev["choices"]:
            acc.add(ch["delta"].get("tool_calls"))
    assert [(c.name, json.loads(c.arguments)) for c in acc.calls()] == [
        ("lookup_order", {"order_id": "A1234"})
    ]
    assert acc.calls()[0].id.startswith("call_")
    finishes = [ch["finish_reason"] for ev in events for ch in ev["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert events[-1]["usage"]["prompt_tokens"] == 80


def test_sim_serves_tool_call_logprobs_like_vllm_when_asked(sim_vllm):
    body = chat(sim_vllm, [SYSTEM, ASK], tools=TOOLS, logprobs=True)
    lps = [t["logprob"] for t in body["choices"][0]["logprobs"]["content"]]
    tokens = "".join(t["token"] for t in body["choices"][0]["logprobs"]["content"])
    assert tokens == CALL["arguments"]
    assert aggregate(lps, "quantile", 0.1) == pytest.approx(0.9)
    events = stream_events(sim_vllm, [SYSTEM, ASK], tools=TOOLS, logprobs=True)
    streamed = [
        t["logprob"]
        for ev in events
        for ch in ev["choices"]
        for t in (ch.get("logprobs") or {}).get("content") or []
    ]
    assert aggregate(streamed, "min") == pytest.approx(0.9)


def test_workload_is_deterministic_labelled_and_in_the_outcomes_format(tmp_path):
    rows = generate(40, seed=3)
    assert rows == generate(40, seed=3)
    assert rows != generate(40, seed=4)
    assert all(r["benchmark"] == "support-agent" and r["conf_kind"] == "synthetic" for r in rows)
    path = write_outcomes(tmp_path / "w.jsonl", rows)
    loaded = load_outcomes(path, strict=True)
    assert len(loaded.records) == len(rows) and set(loaded.models) == {CHEAP, CAPABLE}
    # turns of a conversation extend each other: turn k's messages are a prefix of turn k+1's
    by_conv: dict[str, list[dict]] = {}
    for r in rows:
        by_conv.setdefault(r["conversation_id"], []).append(r)
    assert any(len(turns) >= 3 for turns in by_conv.values())
    for turns in by_conv.values():
        for a, b in zip(turns, turns[1:]):
            assert b["messages"][: len(a["messages"])] == a["messages"]
    # the capable model's tool calls are valid for the tools; some of the cheap model's are not
    _, spec = load_policy_spec(REPO / "examples" / "agent-policy.yaml")
    kinds = {"invalid": 0, "valid": 0}
    for rec in loaded.records:
        if rec.models[CHEAP].tool_calls:
            row = align(rec, spec)
            assert not isinstance(row, str)
            calls = [ToolCall("", c.name, c.arguments) for c in rec.models[CHEAP].tool_calls]
            check = check_answer(spec, 0, calls, "", {"tools": rec.tools})
            kinds["invalid" if check.tool_call_problem else "valid"] += 1
            if check.tool_call_problem:
                assert row.raw[0] is None and rec.models[CHEAP].correct is False
    assert kinds["invalid"] > 0 and kinds["valid"] > kinds["invalid"]


def test_replay_judges_recorded_tool_calls_by_the_tiers_method():
    _, spec = load_policy_spec(REPO / "examples" / "agent-policy.yaml")
    rec = OutcomeRecord.model_validate(
        {
            **ROWS[0],
            "models": {
                CHEAP: outcome(0.9, tool_calls=[CALL], cost_usd=1e-5),
                CAPABLE: outcome(0.95, tool_calls=[CALL], cost_usd=1e-4),
            },
        }
    )
    assert align(rec, spec).raw[0] == pytest.approx(0.9)  # self_eval: the recorded confidence
    escalate = spec.model_copy(
        update={
            "tiers": [
                spec.tiers[0].model_copy(
                    update={
                        "confidence": spec.tiers[0].confidence.model_copy(update={"tool_calls": "escalate"})
                    }
                ),
                spec.tiers[1],
            ]
        }
    )
    assert align(rec, escalate).raw[0] is None
    bad = OutcomeRecord.model_validate(
        {
            **ROWS[0],
            "models": {
                CHEAP: outcome(
                    0.99,
                    tool_calls=[{"name": "lookup_order", "arguments": '{"order_id": 1234}'}],
                    cost_usd=1e-5,
                ),
                CAPABLE: outcome(0.95, tool_calls=[CALL], cost_usd=1e-4),
            },
        }
    )
    assert align(bad, spec).raw[0] is None  # invalid arguments: no confidence, whatever recorded


def test_workload_command_writes_the_file(tmp_path):
    out = tmp_path / "w.jsonl"
    env = child_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierguard",
            "workload",
            "--out",
            str(out),
            "--conversations",
            "5",
            "--seed",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "turns of 5 conversations" in proc.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == generate(5, seed=2)
    bad = subprocess.run(
        [sys.executable, "-m", "tierguard", "workload", "--out", str(out), "--conversations", "0"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
