"""Agent traffic through the real proxy and simulators: tool-call judging (self_eval, logprob,
fixed rules), invalid calls and structured outputs escalating with their own reasons, streamed tool
calls (buffered, early abort), conversation affinity, and what metrics and the decision log say."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agent_data import (
    ORDER_Q,
    ORDER_T1,
    REFUND_Q,
    TICKET_BAD_Q,
    TICKET_FORMAT,
    TICKET_Q,
    TOOLS,
    UNSURE_Q,
    agent_proxy,
    agent_sims,
    decisions,
)


def post(proxy, messages, headers=None, **extra):
    body = {"model": "support", "messages": messages, **extra}
    return httpx.post(f"{proxy.url}/chat/completions", json=body, headers=headers or {}, timeout=20)


def stream(proxy, messages, headers=None, **extra):
    body = {"model": "support", "messages": messages, "stream": True, **extra}
    with httpx.stream(
        "POST", f"{proxy.url}/chat/completions", json=body, headers=headers or {}, timeout=20
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        return r, [json.loads(ln[6:]) for ln in lines if ln != "data: [DONE]"], lines[-1] == "data: [DONE]"


def metric(proxy, name, **labels):
    text = httpx.get(f"{proxy.base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_decisions(log, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = decisions(log)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    raise AssertionError(f"expected {n} decision-log entries, got {len(decisions(log))}")


def sim_stats(sim):
    return httpx.get(f"{sim.base}/admin/stats", timeout=5).json()


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    with agent_sims(tmp_path_factory.mktemp("agent-sims")) as procs:
        yield procs


@pytest.fixture(scope="module")
def stack(sims, tmp_path_factory):
    with agent_proxy(tmp_path_factory.mktemp("agent-proxy"), sims) as (proxy, log):
        yield proxy, log


def test_tool_calls_are_judged_by_self_verification(stack):
    proxy, log = stack
    before = len(decisions(log))
    accepted0 = metric(proxy, "tierguard_tool_calls_total", tier="mini", outcome="accepted")
    escalated0 = metric(proxy, "tierguard_tool_calls_total", tier="mini", outcome="escalated")
    ok = post(proxy, ORDER_Q, tools=TOOLS)
    unsure = post(proxy, UNSURE_Q, tools=TOOLS)
    assert ok.status_code == unsure.status_code == 200
    assert ok.headers["x-tierguard-tier"] == "mini"
    assert float(ok.headers["x-tierguard-confidence"]) == pytest.approx(0.9, abs=1e-3)
    assert ok.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert unsure.headers["x-tierguard-tier"] == "large"
    entries = wait_decisions(log, before + 2)[before:]
    ok_entry, unsure_entry = entries
    assert ok_entry["answer_kind"] == "tool_call"
    assert ok_entry["tiers"][0]["reason"] == "accepted" and ok_entry["tiers"][0]["answer_kind"] == "tool_call"
    assert unsure_entry["tiers"][0]["reason"] == "low_confidence"
    assert metric(proxy, "tierguard_tool_calls_total", tier="mini", outcome="accepted") == accepted0 + 1
    assert metric(proxy, "tierguard_tool_calls_total", tier="mini", outcome="escalated") == escalated0 + 1


def test_invalid_arguments_escalate_without_a_verification_call(stack, sims):
    proxy, log = stack
    before_stats = sim_stats(sims["mini"])
    before = len(decisions(log))
    invalid0 = metric(proxy, "tierguard_escalations_total", tier="mini", reason="invalid_tool_call")
    r = post(proxy, REFUND_Q, tools=TOOLS)
    assert r.status_code == 200 and r.headers["x-tierguard-tier"] == "large"
    assert (
        json.loads(r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])["amount"]
        == 20
    )
    after_stats = sim_stats(sims["mini"])
    assert after_stats["self_eval"] == before_stats["self_eval"]  # no extra call on the cheap tier
    (entry,) = wait_decisions(log, before + 1)[before:]
    first = entry["tiers"][0]
    assert first["reason"] == "invalid_tool_call"
    assert "amount" in first["problem"] and "is not of type 'number'" in first["problem"]
    assert (
        metric(proxy, "tierguard_escalations_total", tier="mini", reason="invalid_tool_call") == invalid0 + 1
    )


def test_structured_output_that_breaks_the_schema_escalates(stack):
    proxy, log = stack
    before = len(decisions(log))
    bad0 = metric(proxy, "tierguard_escalations_total", tier="mini", reason="invalid_structured_output")
    good = post(proxy, TICKET_Q, response_format=TICKET_FORMAT)
    bad = post(proxy, TICKET_BAD_Q, response_format=TICKET_FORMAT)
    assert good.headers["x-tierguard-tier"] == "mini"
    assert bad.headers["x-tierguard-tier"] == "large"
    assert json.loads(bad.json()["choices"][0]["message"]["content"])["summary"] == "Parcel lost."
    entries = wait_decisions(log, before + 2)[before:]
    assert entries[1]["tiers"][0]["reason"] == "invalid_structured_output"
    assert "not valid JSON" in entries[1]["tiers"][0]["problem"]
    assert (
        metric(proxy, "tierguard_escalations_total", tier="mini", reason="invalid_structured_output")
        == bad0 + 1
    )


def test_streamed_tool_calls_are_buffered_then_judged(stack):
    proxy, _ = stack
    r, events, done = stream(proxy, ORDER_Q, tools=TOOLS)
    assert r.headers["x-tierguard-tier"] == "mini" and done
    args = "".join(
        tc["function"].get("arguments", "")
        for ev in events
        for ch in ev["choices"]
        for tc in ch["delta"].get("tool_calls") or []
    )
    assert json.loads(args) == {"order_id": "A1234"}
    r, events, done = stream(proxy, REFUND_Q, tools=TOOLS)
    assert r.headers["x-tierguard-tier"] == "large" and done
    finishes = [ch["finish_reason"] for ev in events for ch in ev["choices"] if ch.get("finish_reason")]
    assert finishes == ["tool_calls"]


def test_fixed_escalate_rule_aborts_the_cheap_stream_at_the_first_call_chunk(tmp_path):
    # answers take 1.5 s, the first token at 10%: a closed stream shows as cancelled in the sim
    with (
        agent_sims(tmp_path, extra_latency_ms=1500, ttft_fraction=0.1) as sims,
        agent_proxy(tmp_path, sims, tool_calls="escalate") as (proxy, log),
    ):
        before = sim_stats(sims["mini"])
        r, _events, done = stream(proxy, ORDER_Q, tools=TOOLS)
        assert r.headers["x-tierguard-tier"] == "large" and done
        (entry,) = wait_decisions(log, 1)
        assert entry["tiers"][0]["reason"] == "tool_call_rule"
        assert entry["answer_kind"] == "tool_call"
        deadline = time.monotonic() + 5
        while sim_stats(sims["mini"])["streams_cancelled"] == before["streams_cancelled"]:
            assert time.monotonic() < deadline, "the cheap tier's stream was not closed early"
            time.sleep(0.05)
        # non-streamed: escalated with its reason, no verification call
        r = post(proxy, ORDER_Q, tools=TOOLS)
        assert r.headers["x-tierguard-tier"] == "large"


def test_logprob_method_uses_call_token_logprobs_where_the_upstream_returns_them(tmp_path):
    with (
        agent_sims(tmp_path, tool_call_logprobs=True) as vllm_like,
        agent_proxy(tmp_path, vllm_like, tool_calls="logprob") as (proxy, _log),
    ):
        r = post(proxy, ORDER_Q, tools=TOOLS)
        assert r.headers["x-tierguard-tier"] == "mini"
        assert float(r.headers["x-tierguard-confidence"]) == pytest.approx(0.9, abs=1e-3)


def test_logprob_method_without_logprobs_escalates_as_no_confidence(sims, tmp_path):
    with agent_proxy(tmp_path, sims, tool_calls="logprob") as (proxy, log):
        r = post(proxy, ORDER_Q, tools=TOOLS)
        assert r.headers["x-tierguard-tier"] == "large"
        (entry,) = wait_decisions(log, 1)
        assert entry["tiers"][0]["reason"] == "no_confidence"


@pytest.mark.parametrize(
    ("affinity", "second_tier"), [("sticky", "large"), ("restart", "mini"), (None, "mini")]
)
def test_conversation_affinity(sims, tmp_path, affinity, second_tier):
    with agent_proxy(tmp_path, sims, affinity=affinity) as (proxy, log):
        conv = {"x-tierguard-conversation": "conv-42"}
        first = post(proxy, UNSURE_Q, headers=conv, tools=TOOLS)
        assert first.headers["x-tierguard-tier"] == "large"
        second = post(proxy, ORDER_T1, headers=conv, tools=TOOLS)
        assert second.headers["x-tierguard-tier"] == second_tier
        # another conversation is not affected, and neither is a turn without an id
        assert (
            post(proxy, ORDER_T1, headers={"x-tierguard-conversation": "other"}, tools=TOOLS).headers[
                "x-tierguard-tier"
            ]
            == "mini"
        )
        assert post(proxy, ORDER_T1, tools=TOOLS).headers["x-tierguard-tier"] == "mini"
        entries = wait_decisions(log, 4)
        assert entries[1]["start_tier"] == ("large" if affinity == "sticky" else "mini")
        if affinity == "sticky":
            assert second.headers["x-tierguard-tiers-tried"] == "large"
            assert metric(proxy, "tierguard_affinity_starts_total", tier="large") == 1
            assert metric(proxy, "tierguard_affinity_conversations") == 1
            # the user field keys a conversation too
            post(proxy, UNSURE_Q, tools=TOOLS, user="u-7")
            assert post(proxy, ORDER_T1, tools=TOOLS, user="u-7").headers["x-tierguard-tier"] == "large"


def test_agent_request_checks_answer_openai_errors(stack):
    proxy, _ = stack
    r = post(proxy, ORDER_Q, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice.function.name"
    r = post(proxy, [*ORDER_T1[:3]], tools=TOOLS)  # a call without its result
    assert r.status_code == 400 and "tool_call_ids" in r.json()["error"]["message"]
    r = post(proxy, ORDER_Q, modalities=["audio"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
