"""A synthetic customer-support workload in the outcomes format (docs/outcomes-format.md).

Every row is **synthetic**: generated here from a seed, labelled ``benchmark:
synthetic-customer-support``, ``conf_kind: synthetic`` and ``synthetic: true``. It can be
redistributed freely; it stands in for recorded traffic in ``tierguard demo`` and
``examples/run-local.sh``.

Three kinds of queries:

``centre``
    Password resets, order tracking, opening hours, ... The cheap model answers them right and
    confidently (calibrated confidence 0.88-0.995).
``tail``
    The long tail hidden under an easy surface form: "Where is this charge from?" is usually a
    routine charge, but it is sometimes a fraud report, a reconciliation delay or an unannounced
    billing-cycle change. The cheap model always answers "routine charge" with a middling
    confidence (0.62-0.80), so it is right on the routine part and wrong on the rest; the capable
    model tells the causes apart.
``hard``
    Visibly hard requests (disputes over several invoices, account mergers, ...). The cheap model
    is unsure (confidence 0.08-0.50) and often wrong.

A threshold of 0.85 on the cheap tier keeps the tail away from it; 0.6 ("route the easy-looking
queries cheap") lets the tail through and the cheap tier's quality on it breaks.

The same seed gives the same rows, byte for byte, on every machine.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..drift import reference_fractions

CHEAP_MODEL = "support-mini"
CAPABLE_MODEL = "support-large"
BENCHMARK = "synthetic-customer-support"
SYSTEM_PROMPT = "You are the customer-support assistant of an online shop. Answer in one or two sentences."
DEFAULT_SEED = 7
DEFAULT_ROWS = 2000

# USD per million tokens (input, output), as in examples/local-policy.yaml
PRICES: dict[str, tuple[float, float]] = {CHEAP_MODEL: (0.15, 0.60), CAPABLE_MODEL: (2.50, 10.00)}

Kind = Literal["centre", "tail", "hard"]
KIND_SHARES: tuple[tuple[Kind, float], ...] = (("centre", 0.50), ("tail", 0.20), ("hard", 0.30))
TAIL_ROUTINE_SHARE = 0.25  # of the tail, the part that really is a routine charge


@dataclass(frozen=True)
class Intent:
    name: str
    kind: Kind
    prompts: tuple[str, ...]  # surface forms with {slots}
    answer: str


CENTRE: tuple[Intent, ...] = (
    Intent(
        "password_reset",
        "centre",
        (
            "How do I reset my password for {email}?",
            "I forgot my password for {email}, what now?",
            "can't log in, need a new password ({n})",
            "Password reset link for account {email} please",
        ),
        "Open Settings > Security > Reset password; the reset link arrives by email within 5 minutes.",
    ),
    Intent(
        "order_tracking",
        "centre",
        (
            "Where is my order {order}?",
            "Track order {order}",
            "When will order {order} arrive?",
            "my package {order} hasn't shown up yet",
        ),
        "Your order's tracking link is under Orders > Track; parcels arrive 2-4 working days after dispatch.",
    ),
    Intent(
        "opening_hours",
        "centre",
        (
            "What are your opening hours in {city}?",
            "Is the {city} store open on {day}?",
            "when does support open on {day}",
            "Opening times for {city} on {day}? ({n})",
        ),
        "Stores and phone support are open Monday to Saturday, 9:00-18:00 local time; chat is open 24/7.",
    ),
    Intent(
        "returns",
        "centre",
        (
            "How do I return item {order}?",
            "Can I send back order {order}?",
            "return policy for a {item} from order {order}?",
        ),
        "Returns are free within 30 days: start one under Orders > Return and drop the parcel at any post office.",
    ),
    Intent(
        "change_address",
        "centre",
        (
            "Change the delivery address of order {order}",
            "I moved, how do I update my address? ({n})",
        ),
        "Update the address under Account > Addresses; orders not yet dispatched pick up the change.",
    ),
)

TAIL_PROMPTS: tuple[str, ...] = (
    "Where is this charge from? {amount} on {date}",
    "what is this {amount} charge on my card from {date}?",
    "I see a payment of {amount} I don't recognise ({date})",
    "Why was I charged {amount} on {date}?",
)
TAIL_ROUTINE = "That {amount} charge is your monthly subscription, billed on the same day each month."
TAIL_CAUSES: dict[str, str] = {
    "fraud_report": "We do not recognise that {amount} charge either: we have blocked the card and opened a fraud case.",
    "reconciliation_delay": "That {amount} is a payment from an earlier order settled late by the bank; no extra charge was made.",
    "billing_cycle_change": "Your billing date moved this month, so {amount} covers a partial period; the next charge is pro-rated.",
}

HARD: tuple[Intent, ...] = (
    Intent(
        "invoice_dispute",
        "hard",
        (
            "I need to dispute invoices {order} and {order2} across two business accounts with different VAT ids",
            "Three invoices ({order}, {order2}) were billed to the wrong cost centre; fix and re-issue with VAT",
        ),
        "I have opened a billing case for both invoices; finance will re-issue them with the right VAT ids within 3 days.",
    ),
    Intent(
        "account_merge",
        "hard",
        (
            "Merge my accounts {email} and {email2} but keep the order history and loyalty points of both",
            "I have two accounts ({email}, {email2}); combine them without losing store credit",
        ),
        "Account merges are done by our team: I have filed a merge request that keeps both order histories and points.",
    ),
    Intent(
        "warranty_edge",
        "hard",
        (
            "My {item} broke after a repair under warranty in another country; who covers the second repair? ({n})",
        ),
        "A repair abroad is covered by the international warranty: send the repair report and we arrange the second repair.",
    ),
)

_CITIES = ("Berlin", "Lyon", "Porto", "Leeds", "Graz", "Turin", "Ghent", "Malmo")
_DAYS = ("Sunday", "Monday", "a public holiday", "Saturday", "Friday evening")
_ITEMS = ("kettle", "headphones", "desk lamp", "blender", "backpack", "monitor")


def _slots(rng: random.Random) -> dict[str, str]:
    return {
        "order": f"#{rng.randrange(100000, 999999)}",
        "order2": f"#{rng.randrange(100000, 999999)}",
        "email": f"user{rng.randrange(1000, 9999)}@example.com",
        "email2": f"user{rng.randrange(1000, 9999)}@example.org",
        "n": f"ticket {rng.randrange(10000, 99999)}",
        "city": rng.choice(_CITIES),
        "day": rng.choice(_DAYS),
        "item": rng.choice(_ITEMS),
        "amount": f"EUR {rng.randrange(5, 400)}.{rng.randrange(0, 100):02d}",
        "date": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
    }


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


def _outcome(
    model: str, answer: str, correct: bool, p: float, tokens_in: int, latency_ms: float
) -> dict[str, Any]:
    tokens_out = _tokens(answer)
    price_in, price_out = PRICES[model]
    return {
        "answer": answer,
        "correct": correct,
        "conf_logprob": round(math.log(p), 6),
        "latency_ms": round(latency_ms, 1),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost_usd": round((tokens_in * price_in + tokens_out * price_out) / 1e6, 10),
    }


def _kind(rng: random.Random) -> Kind:
    u = rng.random()
    acc = 0.0
    for kind, share in KIND_SHARES:
        acc += share
        if u < acc:
            return kind
    return KIND_SHARES[-1][0]


def _row(i: int, rng: random.Random, seed: int) -> dict[str, Any]:
    kind = _kind(rng)
    slots = _slots(rng)
    cheap_wrong_answer = "I'm not sure; please contact support by phone so we can look at your account."
    if kind == "tail":
        prompt = rng.choice(TAIL_PROMPTS).format(**slots)
        routine = rng.random() < TAIL_ROUTINE_SHARE
        category = "charge_routine" if routine else rng.choice(sorted(TAIL_CAUSES))
        reference = (TAIL_ROUTINE if routine else TAIL_CAUSES[category]).format(**slots)
        cheap_answer, cheap_correct = TAIL_ROUTINE.format(**slots), routine
        cheap_p = rng.uniform(0.62, 0.80)
    else:
        intent = rng.choice(CENTRE if kind == "centre" else HARD)
        prompt = rng.choice(intent.prompts).format(**slots)
        category = intent.name
        reference = intent.answer
        if kind == "centre":
            cheap_correct = rng.random() < 0.995
            cheap_p = rng.uniform(0.88, 0.995)
        else:
            cheap_correct = rng.random() < 0.45
            cheap_p = rng.uniform(0.08, 0.50)
        cheap_answer = reference if cheap_correct else cheap_wrong_answer
    capable_correct = rng.random() < 0.992
    capable_answer = reference if capable_correct else cheap_wrong_answer
    capable_p = rng.uniform(0.90, 0.995)
    tokens_in = _tokens(SYSTEM_PROMPT) + _tokens(prompt)
    return {
        "qid": f"support-{seed}-{i:05d}",
        "benchmark": BENCHMARK,
        "split": "train" if i % 2 == 0 else "test",
        "category": f"{kind}:{category}",
        "reference": reference,
        "conf_kind": "synthetic",
        "synthetic": True,
        "system_prompt": SYSTEM_PROMPT,
        "user_prompt": prompt,
        "models": {
            CHEAP_MODEL: _outcome(
                CHEAP_MODEL, cheap_answer, cheap_correct, cheap_p, tokens_in, rng.uniform(250, 600)
            ),
            CAPABLE_MODEL: _outcome(
                CAPABLE_MODEL, capable_answer, capable_correct, capable_p, tokens_in, rng.uniform(700, 1600)
            ),
        },
    }


def generate(seed: int = DEFAULT_SEED, rows: int = DEFAULT_ROWS) -> Iterator[dict[str, Any]]:
    """``rows`` outcome rows with distinct prompts, deterministic from ``seed``."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = random.Random(seed)
    seen: set[str] = set()
    i = 0
    attempts = 0
    while i < rows:
        attempts += 1
        if attempts > rows * 20:
            raise ValueError(f"could not make {rows} distinct prompts from seed {seed}")
        row = _row(i, rng, seed)
        if row["user_prompt"] in seen:
            continue
        seen.add(row["user_prompt"])
        yield row
        i += 1


def confidence_reference(rows: list[dict[str, Any]], model: str = CHEAP_MODEL) -> list[float]:
    """The drift reference of ``model`` on the train split: the proportions of its confidences in
    the fixed bins (what ``tierguard calibrate`` writes into ``confidence.reference``)."""
    values = [math.exp(r["models"][model]["conf_logprob"]) for r in rows if r.get("split") == "train"]
    return reference_fractions(values)


def write(path: str | Path, seed: int = DEFAULT_SEED, rows: int = DEFAULT_ROWS) -> Path:
    """Write the workload as JSONL (one row per line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in generate(seed, rows):
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(p)
    return p


LABEL = "synthetic customer-support workload"
