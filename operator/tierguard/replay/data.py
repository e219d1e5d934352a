"""Recorded outcomes aligned to a policy's tiers: one :class:`Row` per query that every tier answered.

A tier's raw confidence comes from :func:`tierguard.cascade.raw_confidence` on the recorded
log-probability (one answer token: ``exp(conf_logprob)``), so replay sees exactly the number the
proxy would compute. A tool-call answer gets the raw confidence its tier's ``toolCalls`` method gives
(:func:`tierguard.cascade.effective_raw`: none under ``escalate`` or when the call is invalid for the
row's ``tools``, 1.0 under ``accept``, the recorded one otherwise); an answer that breaks the row's
``response_format`` has none. A row whose tier model is missing, or lacks ``correct``, or has no cost
(neither ``cost_usd`` nor tokens with tier prices) cannot be scored: it is skipped and counted
with its reason, never dropped silently.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cascade import check_answer, effective_raw, raw_confidence
from ..outcomes import OutcomeFormatError, OutcomeRecord, load_outcomes
from ..policy import CascadeSpec, Tier
from ..toolcalls import ToolCall


@dataclass(frozen=True, slots=True)
class Row:
    qid: str
    benchmark: str | None
    split: str | None
    category: str | None
    prompt: str
    raw: tuple[float | None, ...]  # per tier; None: no confidence recorded
    correct: tuple[bool, ...]
    cost: tuple[float, ...]
    answer: tuple[str, ...]


@dataclass
class Dataset:
    path: str
    tiers: list[str]
    models: list[str]
    rows: list[Row] = field(default_factory=list)
    malformed: list[OutcomeFormatError] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    total_records: int = 0

    def select(self, *, split: str | None = None, benchmark: str | None = None) -> list[Row]:
        return [
            r
            for r in self.rows
            if (split is None or r.split == split) and (benchmark is None or r.benchmark == benchmark)
        ]

    def benchmarks(self) -> list[str]:
        return sorted({r.benchmark for r in self.rows if r.benchmark})

    def summary(self) -> dict[str, object]:
        return {
            "path": self.path,
            "records": self.total_records,
            "rows_used": len(self.rows),
            "malformed_lines": len(self.malformed),
            "malformed_examples": [str(e) for e in self.malformed[:10]],
            "skipped_rows": sum(self.skipped.values()),
            "skipped_reasons": dict(self.skipped.most_common()),
        }


def _cost(tier: Tier, out_cost: float | None, tokens_in: int | None, tokens_out: int | None) -> float | None:
    if out_cost is not None:
        return out_cost
    if (
        tokens_in is not None
        and tokens_out is not None
        and (tier.price_input_per_million or tier.price_output_per_million)
    ):
        return tier.cost_usd(tokens_in, tokens_out)
    return None


def align(record: OutcomeRecord, spec: CascadeSpec) -> Row | str:
    """The record as a :class:`Row` for ``spec``'s tiers, or the reason it cannot be used."""
    raws: list[float | None] = []
    correct: list[bool] = []
    costs: list[float] = []
    answers: list[str] = []
    request = {"tools": record.tools, "response_format": record.response_format}
    for i, tier in enumerate(spec.tiers):
        out = record.models.get(tier.model)
        if out is None:
            return f"model {tier.model} missing"
        if out.correct is None:
            return f"model {tier.model}: no 'correct'"
        cost = _cost(tier, out.cost_usd, out.tokens_in, out.tokens_out)
        if cost is None:
            return f"model {tier.model}: no cost_usd (and no tokens with tier prices)"
        measured = None if out.conf_logprob is None else raw_confidence(spec, [out.conf_logprob])
        calls = [ToolCall("", c.name, c.arguments) for c in out.tool_calls or ()]
        # a tool call or a structured output is judged as the proxy judges it (tierguard.cascade)
        raws.append(effective_raw(check_answer(spec, i, calls, out.answer, request), measured))
        correct.append(out.correct)
        costs.append(cost)
        answers.append(out.as_text())
    return Row(
        qid=record.qid,
        benchmark=record.benchmark,
        split=record.split,
        category=record.category,
        prompt=record.user_prompt,
        raw=tuple(raws),
        correct=tuple(correct),
        cost=tuple(costs),
        answer=tuple(answers),
    )


def load_dataset(
    path: str | Path, spec: CascadeSpec, *, strict: bool = False, benchmarks: Sequence[str] | None = None
) -> Dataset:
    """Load outcomes and align them to ``spec``. ``strict``: stop at the first malformed line."""
    outcomes = load_outcomes(path, strict=strict)
    ds = Dataset(path=str(path), tiers=[t.name for t in spec.tiers], models=[t.model for t in spec.tiers])
    ds.malformed = list(outcomes.skipped)
    ds.total_records = len(outcomes.records) + len(outcomes.skipped)
    wanted = set(benchmarks) if benchmarks else None
    for rec in outcomes.records:
        if wanted is not None and rec.benchmark not in wanted:
            continue
        item = align(rec, spec)
        if isinstance(item, str):
            ds.skipped[item] += 1
        else:
            ds.rows.append(item)
    return ds


def warn_skipped(ds: Dataset, prog: str) -> None:
    """Tell the user on stderr what was skipped (first lines by number), never silently."""
    for err in ds.malformed[:10]:
        print(f"{prog}: warning: skipped malformed line {err}", file=sys.stderr)
    if len(ds.malformed) > 10:
        print(f"{prog}: warning: ... and {len(ds.malformed) - 10} more malformed lines", file=sys.stderr)
    for reason, n in ds.skipped.most_common():
        print(f"{prog}: warning: skipped {n} rows: {reason}", file=sys.stderr)
