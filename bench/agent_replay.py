"""Replay of the synthetic support-agent workload (issue 11): savings on tool-calling turns, quality held.

Generates the workload (``tierguard.workload.generate``, deterministic from ``--seed``), then routes
every test-split turn, conversation by conversation and in turn order, through the same pure code
the proxy runs (``tierguard.judging.check_answer`` / ``effective_raw`` / ``judge_answer`` and
``tierguard.affinity.AffinityTable``) under several policies:

- ``capable-only``: every turn on the capable tier (the quality and cost reference);
- ``toolcalls-escalate``: the cheap tier's tool calls escalate (the behaviour before issue 11);
- ``toolcalls-self_eval`` / ``toolcalls-accept``: the cheap tier's calls judged by
  self-verification / accepted when their arguments validate;
- each ``self_eval`` variant again with ``affinity: sticky``.

Reports accuracy and cost per turn on all turns, on tool-calling turns, and on hard
conversations, the escalation reasons, and the savings against capable-only. Self-verification
costs one extra short call on the cheap tier per judged call (its prompt is the conversation plus
the tools and the call; one output token), which is counted.

    python bench/agent_replay.py --conversations 2000 --seed 11 --json-out /tmp/agent-replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine_info, run_main
from tierguard.affinity import AffinityTable
from tierguard.cascade import check_answer, effective_raw, judge_answer, raw_confidence
from tierguard.outcomes import OutcomeRecord
from tierguard.policy import CascadeSpec
from tierguard.toolcalls import ToolCall, verification_messages
from tierguard.workload import CAPABLE, CHEAP, PRICES, generate

THRESHOLDS = tuple(round(0.5 + 0.025 * k, 3) for k in range(21))


def make_spec(threshold: float, tool_calls: str, affinity: str) -> CascadeSpec:
    tiers = []
    for name, model in (("mini", CHEAP), ("capable", CAPABLE)):
        p_in, p_out = PRICES[model]
        conf: dict[str, Any] = {"threshold": threshold}
        if name == "mini":
            conf["toolCalls"] = tool_calls
        tiers.append(
            {
                "name": name,
                "baseUrl": "http://127.0.0.1:1/v1",
                "model": model,
                "priceInputPerMillion": p_in,
                "priceOutputPerMillion": p_out,
                "confidence": conf,
            }
        )
    return CascadeSpec.model_validate({"tiers": tiers, "affinity": affinity})


@dataclass
class Tally:
    turns: int = 0
    correct: int = 0
    cost: float = 0.0
    escalated: int = 0

    def add(self, correct: bool, cost: float, escalated: bool) -> None:
        self.turns += 1
        self.correct += correct
        self.cost += cost
        self.escalated += escalated

    def as_dict(self, reference: Tally | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "turns": self.turns,
            "accuracy": self.correct / self.turns if self.turns else None,
            "cost_per_turn": self.cost / self.turns if self.turns else None,
            "escalated": self.escalated / self.turns if self.turns else None,
        }
        if reference is not None and reference.cost:
            out["savings"] = 1.0 - self.cost / reference.cost
        return out


@dataclass
class Result:
    all: Tally = field(default_factory=Tally)
    tool: Tally = field(default_factory=Tally)
    text: Tally = field(default_factory=Tally)
    hard: Tally = field(default_factory=Tally)
    reasons: Counter[str] = field(default_factory=Counter)


def verify_cost(rec: OutcomeRecord, calls: list[ToolCall]) -> float:
    """One self-verification call on the cheap tier: the verification prompt in, one token out."""
    msgs = verification_messages(rec.messages or [], rec.tools, calls)
    tokens_in = sum(max(1, len(json.dumps(m)) // 4) for m in msgs)
    p_in, p_out = PRICES[CHEAP]
    return (tokens_in * p_in + p_out) / 1e6


def run_policy(records: list[OutcomeRecord], spec: CascadeSpec | None, hard: set[str]) -> Result:
    res = Result()
    table = AffinityTable(max_entries=1_000_000, ttl_s=3600.0)
    names = ["mini", "capable"]
    for clock, rec in enumerate(records):
        outs = [rec.models[CHEAP], rec.models[CAPABLE]]
        is_tool_turn = bool(rec.models[CAPABLE].tool_calls)
        cost = 0.0
        if spec is None:
            answered = 1
            cost = outs[1].cost_usd or 0.0
        else:
            request = {"tools": rec.tools, "response_format": rec.response_format}
            start = (
                table.start_tier(rec.conversation_id, names, float(clock)) if spec.affinity == "sticky" else 0
            )
            answered = 1
            for i in range(start, 2):
                o = outs[i]
                cost += o.cost_usd or 0.0
                calls = [ToolCall("", c.name, c.arguments) for c in o.tool_calls or ()]
                check = check_answer(spec, i, calls, o.answer, request)
                measured = None if o.conf_logprob is None else raw_confidence(spec, [o.conf_logprob])
                if (
                    i < 1
                    and check.kind == "tool_call"
                    and check.method == "self_eval"
                    and check.tool_call_problem is None
                ):
                    cost += verify_cost(rec, calls)
                j = judge_answer(spec, i, effective_raw(check, measured), check=check)
                if j.accepted:
                    answered = i
                    break
                res.reasons[j.reason] += 1
            if start:
                res.reasons["affinity_start"] += 1
            if spec.affinity == "sticky":
                table.record(rec.conversation_id, names, answered, float(clock))
        correct = bool(outs[answered].correct)
        escalated = answered > 0
        res.all.add(correct, cost, escalated)
        (res.tool if is_tool_turn else res.text).add(correct, cost, escalated)
        if rec.qid in hard:
            res.hard.add(correct, cost, escalated)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.005,
        help="each policy's threshold: the cheapest on the train split within this of capable-only",
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    rows = generate(args.conversations, args.seed)
    hard = {r["qid"] for r in rows if r["difficulty"] == "hard"}  # OutcomeRecord ignores the label
    records = [OutcomeRecord.model_validate(r) for r in rows if r["split"] == "test"]
    train = [OutcomeRecord.model_validate(r) for r in rows if r["split"] == "train"]
    print(
        f"{len(records)} test / {len(train)} train turns of {args.conversations} conversations "
        f"(seed {args.seed})",
        file=sys.stderr,
    )
    variants = {
        "toolcalls-escalate": ("escalate", "restart"),
        "toolcalls-accept": ("accept", "restart"),
        "toolcalls-self_eval": ("self_eval", "restart"),
        "toolcalls-self_eval+sticky": ("self_eval", "sticky"),
    }
    train_ref = run_policy(train, None, hard).all
    floor = train_ref.correct / train_ref.turns - args.max_accuracy_drop
    policies: dict[str, CascadeSpec | None] = {"capable-only": None}
    thresholds: dict[str, float] = {}
    for name, (method, affinity) in variants.items():
        best: tuple[float, float] | None = None  # (cost, threshold)
        for t in THRESHOLDS:
            tally = run_policy(train, make_spec(t, method, affinity), hard).all
            if tally.correct / tally.turns >= floor and (best is None or tally.cost < best[0]):
                best = (tally.cost, t)
        thresholds[name] = best[1] if best is not None else 1.0
        policies[name] = make_spec(thresholds[name], method, affinity)
    results: dict[str, Result] = {}
    for name, spec in policies.items():
        results[name] = run_policy(records, spec, hard)
    ref = results["capable-only"]
    out: dict[str, Any] = {
        "machine": machine_info(),
        "seed": args.seed,
        "conversations": args.conversations,
        "test_turns": len(records),
        "max_accuracy_drop": args.max_accuracy_drop,
        "policies": {
            name: {
                "threshold": thresholds.get(name),
                "all": r.all.as_dict(ref.all),
                "tool_call_turns": r.tool.as_dict(ref.tool),
                "text_turns": r.text.as_dict(ref.text),
                "hard_conversations": r.hard.as_dict(ref.hard),
                "escalation_reasons": dict(r.reasons.most_common()),
            }
            for name, r in results.items()
        },
    }
    print(
        f"{'policy':28} {'thr':>5} {'turns':>6} {'acc':>7} {'tool acc':>9} {'tool save':>10} {'all save':>9} {'hard acc':>9}"
    )
    for name, d in out["policies"].items():
        print(
            f"{name:28} {d['threshold'] or 0:5.2f} {d['all']['turns']:6d} {d['all']['accuracy']:7.1%} {d['tool_call_turns']['accuracy']:9.1%} "
            f"{d['tool_call_turns'].get('savings', 0.0):10.1%} {d['all'].get('savings', 0.0):9.1%} "
            f"{d['hard_conversations']['accuracy']:9.1%}"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main("agent_replay", main)
