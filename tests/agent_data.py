"""Agent traffic for the proxy and SDK tests: recorded turns, two simulators and a proxy in front.

Rows (cheap ``mini`` / capable ``large``):

- ``hours``: a text answer, the cheap tier confident (accepted on mini);
- ``order``: a tool call ``lookup_order(A1234)``, valid and confidently verified on mini;
- ``refund``: mini's ``refund_order`` has an amount as a string (invalid: escalates at no cost);
- ``unsure``: a valid call mini is unsure of (self-verification P(Y) = 0.3: escalates);
- ``ticket``: a ``json_schema`` answer, valid on mini; ``ticket-bad``: mini wraps it in prose;
- ``order-t1``: the turn after ``order``'s tool result (a text answer).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from procs import RunningProcess, start_proxy, start_sim, write_outcomes

SYSTEM = {"role": "system", "content": "You are the support agent of an online shop."}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Status of an order.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": "^A[0-9]{4}$"}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
    },
}
REFUND = {
    "type": "function",
    "function": {
        "name": "refund_order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
            "required": ["order_id", "amount"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [LOOKUP, REFUND]
TICKET_SCHEMA = {
    "type": "object",
    "properties": {"priority": {"type": "string", "enum": ["low", "high"]}, "summary": {"type": "string"}},
    "required": ["priority", "summary"],
    "additionalProperties": False,
}
TICKET_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Ticket", "strict": True, "schema": TICKET_SCHEMA},
}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


ORDER_Q = [SYSTEM, user("Where is my order A1234?")]
ORDER_CALL = {"name": "lookup_order", "arguments": '{"order_id": "A1234"}'}
ORDER_T1 = [
    *ORDER_Q,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": ORDER_CALL}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped", "eta": "Friday"}'},
]
REFUND_Q = [SYSTEM, user("Refund 20 dollars on order A2222, it arrived late.")]
UNSURE_Q = [SYSTEM, user("Something is wrong with A3333.")]
HOURS_Q = [SYSTEM, user("When are you open?")]
TICKET_Q = [SYSTEM, user("Write a ticket: the app crashes at login.")]
TICKET_BAD_Q = [SYSTEM, user("Write a ticket: my parcel never came.")]
GOOD_TICKET = '{"priority": "high", "summary": "App crashes at login."}'


def _out(conf: float, **answer: Any) -> dict[str, Any]:
    return {"correct": True, "conf_logprob": math.log(conf), "latency_ms": 0.0, "tokens_in": 120, **answer}


def _row(
    qid: str, messages: list[dict[str, Any]], mini: dict[str, Any], large: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "qid": qid,
        "messages": messages,
        "tools": TOOLS,
        "models": {"mini": mini, "large": large},
        **extra,
    }


ROWS = [
    _row(
        "hours", HOURS_Q, _out(0.95, answer="We are open 9 to 5."), _out(0.99, answer="9:00-17:00, Mon-Fri.")
    ),
    _row("order", ORDER_Q, _out(0.9, tool_calls=[ORDER_CALL]), _out(0.97, tool_calls=[ORDER_CALL])),
    _row(
        "refund",
        REFUND_Q,
        _out(
            0.95, tool_calls=[{"name": "refund_order", "arguments": '{"order_id": "A2222", "amount": "20"}'}]
        ),
        _out(0.97, tool_calls=[{"name": "refund_order", "arguments": '{"order_id": "A2222", "amount": 20}'}]),
    ),
    _row(
        "unsure",
        UNSURE_Q,
        _out(0.3, tool_calls=[{"name": "lookup_order", "arguments": '{"order_id": "A3333"}'}]),
        _out(0.97, tool_calls=[{"name": "lookup_order", "arguments": '{"order_id": "A3333"}'}]),
    ),
    _row(
        "ticket",
        TICKET_Q,
        _out(0.95, answer=GOOD_TICKET),
        _out(0.99, answer=GOOD_TICKET),
        response_format=TICKET_FORMAT,
    ),
    _row(
        "ticket-bad",
        TICKET_BAD_Q,
        _out(0.95, answer='Sure! {"priority": "high", "summary": "Parcel lost."}'),
        _out(0.99, answer='{"priority": "high", "summary": "Parcel lost."}'),
        response_format=TICKET_FORMAT,
    ),
    _row(
        "order-t1",
        ORDER_T1,
        _out(0.9, answer="It has shipped; it arrives on Friday."),
        _out(0.99, answer="Shipped, arriving Friday."),
    ),
]


def policy(
    sims: dict[str, RunningProcess],
    *,
    tool_calls: str | None = "self_eval",
    affinity: str | None = None,
    threshold: float = 0.75,
    **confidence: Any,
) -> dict[str, Any]:
    mini_conf: dict[str, Any] = {"threshold": threshold}
    if tool_calls:
        mini_conf["toolCalls"] = tool_calls
    spec: dict[str, Any] = {
        "tiers": [
            {
                "name": "mini",
                "baseUrl": sims["mini"].url,
                "model": "mini",
                "priceInputPerMillion": 0.15,
                "priceOutputPerMillion": 0.6,
                "timeoutSeconds": 10,
                "confidence": mini_conf,
            },
            {
                "name": "large",
                "baseUrl": sims["large"].url,
                "model": "large",
                "priceInputPerMillion": 2.5,
                "priceOutputPerMillion": 10.0,
                "timeoutSeconds": 10,
            },
        ],
        "confidence": {"method": "logprob", "aggregate": "min", **confidence},
    }
    if affinity:
        spec["affinity"] = affinity
    return spec


@contextlib.contextmanager
def agent_sims(tmp: Path, **sim_flags: Any) -> Iterator[dict[str, RunningProcess]]:
    data = write_outcomes(tmp / "agent.jsonl", ROWS)
    with (
        start_sim(data, "mini", latency_scale=0, **sim_flags) as mini,
        start_sim(data, "large", latency_scale=0) as large,
    ):
        yield {"mini": mini, "large": large}


@contextlib.contextmanager
def agent_proxy(
    tmp: Path, sims: dict[str, RunningProcess], name: str = "policy", **kw: Any
) -> Iterator[tuple[RunningProcess, Path]]:
    """A proxy on ``policy(sims, **kw)``; yields it and its decision-log path."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy(sims, **kw)))
    log = tmp / f"{name}-decisions.jsonl"
    with start_proxy(path, decision_log=str(log)) as proxy:
        yield proxy, log


def decisions(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [
        e
        for e in (json.loads(line) for line in log.read_text().splitlines() if line.strip())
        if e.get("event") == "request"
    ]
