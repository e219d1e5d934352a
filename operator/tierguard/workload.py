"""A labelled synthetic agent workload: a customer-support agent with four tools.

Pure and deterministic: the same ``seed`` gives the same rows in every process (no use of
``hash()``). Each row is one turn of a conversation in the outcomes format
(docs/outcomes-format.md): ``messages`` up to the turn (the *gold* trajectory: earlier turns as a
correct agent answered them, tool results included), ``tools``, sometimes ``response_format``, and
what a cheap model (``agent-mini``) and a capable one (``agent-large``) answered, each labelled
``correct`` with a confidence that is informative but imperfect.

The numbers are invented, not measured: they exercise tool-call judging, structured outputs and
multi-turn conversations, and are labelled ``benchmark: support-agent``, ``conf_kind: synthetic``.
The cheap model is good at looking orders up, weaker at refunds and poor at knowing when to hand
over to a person; a share of its wrong calls have arguments that are not JSON or break the tool's
schema (what ``invalid_tool_call`` catches for free), the rest are valid calls of the wrong tool or
with wrong values (what the confidence must catch).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

CHEAP, CAPABLE = "agent-mini", "agent-large"
PRICES = {CHEAP: (0.15, 0.60), CAPABLE: (2.50, 10.00)}  # USD per million tokens in / out
SYSTEM = (
    "You are the support agent of an online shop. Use the tools to look orders up, refund them, "
    "search the help centre, or hand the customer over to a person. Be brief."
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Status, items and total of an order.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "pattern": "^A[0-9]{4}$"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund_order",
            "description": "Refund (part of) an order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "pattern": "^A[0-9]{4}$"},
                    "amount": {"type": "number", "exclusiveMinimum": 0},
                    "reason": {"enum": ["damaged", "late", "wrong_item", "other"]},
                },
                "required": ["order_id", "amount", "reason"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_kb",
            "description": "Search the help-centre articles.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "minLength": 3}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "escalate_to_human",
            "description": "Hand the conversation to a person, with a summary.",
            "parameters": {
                "type": "object",
                "properties": {"summary": {"type": "string", "minLength": 10}},
                "required": ["summary"],
                "additionalProperties": False,
            },
        },
    },
]

TICKET_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "ticket",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "priority": {"enum": ["low", "normal", "high"]},
                "summary": {"type": "string"},
            },
            "required": ["priority", "summary"],
            "additionalProperties": False,
        },
    },
}

# P(correct) of the cheap model per kind of gold answer; the capable model is right 98% of the time.
CHEAP_SKILL = {
    "lookup_order": 0.93,
    "search_kb": 0.86,
    "refund_order": 0.72,
    "escalate_to_human": 0.5,
    "text": 0.9,
    "ticket": 0.75,
}
CAPABLE_SKILL = 0.98
# A share of conversations is hard (an upset customer, an unusual case): the cheap model's skill
# drops on every turn of them while its confidence on wrong answers rises. Escalating once is then
# evidence about the later turns, which conversation affinity (sticky) uses.
HARD_SHARE = 0.25
HARD_PENALTY = 0.25
HARD_OVERCONFIDENCE = 0.12
# Of the cheap model's wrong tool calls, the share whose arguments are not JSON or break the schema.
INVALID_SHARE = 0.4
PRODUCTS = ("headphones", "a desk lamp", "running shoes", "a kettle", "a backpack", "a phone case")
ETAS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _tool_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "arguments": json.dumps(args)}


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def order_id(self) -> str:
        return f"A{self.rng.randrange(1000, 10000)}"

    # --- answers ---------------------------------------------------------------------------------

    def wrong_call(self, gold: dict[str, Any]) -> dict[str, Any]:
        """A wrong answer to a turn whose gold answer is a tool call."""
        rng = self.rng
        args = json.loads(gold["arguments"])
        if rng.random() < INVALID_SHARE:
            kind = rng.randrange(3)
            if kind == 0:  # cut-off JSON
                return {
                    "name": gold["name"],
                    "arguments": gold["arguments"][: max(2, len(gold["arguments"]) // 2)],
                }
            if kind == 1 and "order_id" in args:  # breaks the pattern
                return _tool_call(gold["name"], {**args, "order_id": args["order_id"][1:]})
            return _tool_call(gold["name"], {**args, "note": "extra"})  # additionalProperties: false
        if rng.random() < 0.5:
            other = rng.choice(
                [t["function"]["name"] for t in TOOLS if t["function"]["name"] != gold["name"]]
            )
            fills: dict[str, dict[str, Any]] = {
                "lookup_order": {"order_id": self.order_id()},
                "refund_order": {"order_id": self.order_id(), "amount": 10.0, "reason": "other"},
                "search_kb": {"query": "order problem"},
                "escalate_to_human": {"summary": "Customer has a problem with an order."},
            }
            return _tool_call(other, fills[other])
        changed = dict(args)
        key = rng.choice(sorted(args))
        value = args[key]
        if key == "order_id":
            changed[key] = self.order_id()
        elif key == "amount":
            changed[key] = round(value * rng.choice((0.5, 2.0)), 2)
        elif key == "reason":
            changed[key] = "other" if value != "other" else "late"
        else:
            changed[key] = "help"
        return _tool_call(gold["name"], changed)

    def confidence(self, correct: bool, capable: bool, hard: bool) -> float:
        u = self.rng.random()
        if capable:
            return 0.9 + 0.099 * u if correct else 0.5 + 0.4 * u
        if correct:
            return 0.72 + 0.27 * math.sqrt(u)
        return 0.2 + 0.65 * u + (HARD_OVERCONFIDENCE if hard else 0.0)

    def outcome(
        self, model: str, kind: str, gold: dict[str, Any], messages: list[dict[str, Any]], hard: bool
    ) -> dict[str, Any]:
        capable = model == CAPABLE
        skill = CAPABLE_SKILL if capable else CHEAP_SKILL[kind] - (HARD_PENALTY if hard else 0.0)
        correct = self.rng.random() < skill
        out: dict[str, Any]
        if "tool_calls" in gold:
            calls = gold["tool_calls"] if correct else [self.wrong_call(gold["tool_calls"][0])]
            out = {"tool_calls": calls}
            text_out = json.dumps(calls)
        elif kind == "ticket":
            if correct:
                answer = gold["answer"]
            else:
                answer = self.rng.choice(
                    (
                        '{"priority": "urgent", "summary": "Customer unhappy."}',
                        '{"priority": "high"}',
                        'Here is the ticket: {"priority": "high", "summary": "..."}',
                        '{"priority": "low", "summary": "No action needed."}',
                    )
                )
            out = {"answer": answer}
            text_out = answer
        else:
            answer = gold["answer"] if correct else gold["wrong"]
            out = {"answer": answer}
            text_out = answer
        tokens_in = _tokens(json.dumps(TOOLS)) + sum(_tokens(json.dumps(m)) for m in messages)
        tokens_out = _tokens(text_out) + 5
        p_in, p_out = PRICES[model]
        base = 900.0 if capable else 350.0
        per_token = 18.0 if capable else 7.0
        out.update(
            {
                "correct": correct,
                "conf_logprob": round(math.log(self.confidence(correct, capable, hard)), 6),
                "latency_ms": round(base + per_token * tokens_out + self.rng.uniform(0, 200), 1),
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "cost_usd": (tokens_in * p_in + tokens_out * p_out) / 1e6,
            }
        )
        return out

    # --- conversations ---------------------------------------------------------------------------

    def script(self, conv: int) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """The turns of one conversation: (kind, gold answer, messages appended after it)."""
        rng = self.rng
        oid = self.order_id()
        product = rng.choice(PRODUCTS)
        total = round(rng.uniform(12, 180), 2)
        eta = rng.choice(ETAS)

        def call(
            name: str, args: dict[str, Any], result: dict[str, Any], k: int
        ) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
            tc = _tool_call(name, args)
            cid = f"call_{conv}_{k}"
            after: list[dict[str, Any]] = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": cid, "type": "function", "function": tc}],
                },
                {"role": "tool", "tool_call_id": cid, "content": json.dumps(result)},
            ]
            return name, {"tool_calls": [tc]}, after

        def say(
            answer: str, wrong: str, user_next: str | None
        ) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
            after: list[dict[str, Any]] = [{"role": "assistant", "content": answer}]
            if user_next:
                after.append({"role": "user", "content": user_next})
            return "text", {"answer": answer, "wrong": wrong}, after

        scenario = rng.choice(("status", "status", "refund", "policy", "handover"))
        order = {"order_id": oid, "status": "shipped", "eta": eta, "item": product, "total": total}
        if scenario == "status":
            first = f"Hi, where is my order {oid}?"
            turns = [
                call("lookup_order", {"order_id": oid}, order, 0),
                say(
                    f"Your order {oid} ({product}) has shipped and should arrive on {eta}.",
                    f"Your order {oid} is still being prepared.",
                    "Thanks! Can I still change the delivery address?" if rng.random() < 0.6 else None,
                ),
            ]
            if turns[-1][2][-1]["role"] == "user":
                turns.append(
                    call(
                        "search_kb",
                        {"query": "change delivery address after shipping"},
                        {"article": "Once shipped, ask the carrier to redirect the parcel."},
                        2,
                    )
                )
                turns.append(
                    say(
                        "Since it has shipped, the carrier can redirect it: use the link in your "
                        "shipping e-mail.",
                        "Yes, I have changed the address for you.",
                        None,
                    )
                )
        elif scenario == "refund":
            first = f"Order {oid} arrived damaged. I'd like my money back."
            delivered = {**order, "status": "delivered"}
            turns = [
                call("lookup_order", {"order_id": oid}, delivered, 0),
                call(
                    "refund_order",
                    {"order_id": oid, "amount": total, "reason": "damaged"},
                    {"refund_id": f"R{conv:05d}", "amount": total},
                    1,
                ),
                say(
                    f"I've refunded {total:.2f} USD for order {oid}; it reaches your card in 3-5 days.",
                    f"I've refunded {total / 2:.2f} USD for order {oid}.",
                    None,
                ),
            ]
        elif scenario == "policy":
            first = f"What is your return window for {product}?"
            turns = [
                call(
                    "search_kb",
                    {"query": f"return window {product}"},
                    {"article": "Most items can be returned within 30 days of delivery."},
                    0,
                ),
                say(
                    f"You can return {product} within 30 days of delivery.",
                    f"Returns of {product} are not possible.",
                    None,
                ),
            ]
        else:
            first = (
                f"This is the third time order {oid} went wrong. I want to talk to a person about "
                "compensation, now."
            )
            summary = f"Order {oid} failed three times; customer asks for compensation."
            turns = [
                call("escalate_to_human", {"summary": summary}, {"ticket": f"T{conv:05d}"}, 0),
                say(
                    "I'm sorry. A colleague has your case and will contact you within a day.",
                    "I understand. Is there anything else I can help you with?",
                    "Please write that up as a ticket for me.",
                ),
                (
                    "ticket",
                    {"answer": json.dumps({"priority": "high", "summary": summary})},
                    [],
                ),
            ]
        return [("start", {"first": first}, []), *turns]


def generate(conversations: int = 300, seed: int = 11, test_share: float = 0.5) -> list[dict[str, Any]]:
    """Rows of the workload, conversation by conversation, turn by turn."""
    if conversations < 1:
        raise ValueError("conversations must be at least 1")
    gen = _Gen(seed)
    rows: list[dict[str, Any]] = []
    for conv in range(conversations):
        script = gen.script(conv)
        split = "test" if gen.rng.random() < test_share else "train"
        hard = gen.rng.random() < HARD_SHARE
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": script[0][1]["first"]},
        ]
        for turn, (kind, gold, after) in enumerate(script[1:]):
            row: dict[str, Any] = {
                "qid": f"agent-{conv:05d}-t{turn}",
                "benchmark": "support-agent",
                "split": split,
                "category": kind,
                "difficulty": "hard" if hard else "normal",
                "conf_kind": "synthetic",
                "conversation_id": f"conv-{seed}-{conv:05d}",
                "turn": turn,
                "messages": [dict(m) for m in messages],
                "tools": TOOLS,
                "reference": json.dumps(gold.get("tool_calls") or gold.get("answer")),
                "models": {m: gen.outcome(m, kind, gold, messages, hard) for m in (CHEAP, CAPABLE)},
            }
            if kind == "ticket":
                row["response_format"] = TICKET_FORMAT
            rows.append(row)
            messages = messages + after
    return rows
