"""Recorded model outcomes: the JSONL format read by ``tierguard sim``, ``replay`` and ``calibrate``.

One JSON object per line (see docs/outcomes-format.md)::

    {"qid": "q-1", "user_prompt": "...", "system_prompt": "...", "benchmark": "mmlu",
     "split": "train", "category": "anatomy",
     "models": {"gpt-4o-mini": {"answer": "B", "correct": true, "conf_logprob": -0.23,
                                "latency_ms": 684.4, "tokens_in": 128, "tokens_out": 1,
                                "cost_usd": 1.98e-05}}}

Only ``user_prompt`` and ``models.*.answer`` are required. A malformed line is reported with its
line number; lenient loading skips it and counts it, strict loading stops at it.

:func:`load_dataset` aligns the records to a policy's tiers for ``replay`` and ``calibrate``: one
:class:`Row` per query that every tier answered. A tier's raw confidence comes from
:func:`tierguard.judging.recorded_raw_confidence` on the recorded log-probability (one answer
token: ``exp(conf_logprob)``), so replay sees exactly the number the proxy would compute. A row
whose tier model is missing, or lacks ``correct``, or has no cost (neither ``cost_usd`` nor tokens
with tier prices) cannot be scored: it is skipped and counted with its reason, never dropped
silently.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from .errors import OutcomeFormatError
from .judging import recorded_raw_confidence
from .policy import CascadeSpec, Tier


class ModelOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    answer: str
    # strict: "yes", "1" or 1 are not silently read as true
    correct: StrictBool | None = None
    conf_logprob: float | None = Field(
        default=None, description="Log-probability behind the confidence; null if none."
    )
    latency_ms: float | None = Field(default=None, ge=0)
    tokens_in: int | None = Field(default=None, ge=0)
    tokens_out: int | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)

    @field_validator("conf_logprob")
    @classmethod
    def _finite_nonpositive(cls, v: float | None) -> float | None:
        if v is None:
            return None
        if math.isnan(v) or v > 1e-6:
            raise ValueError("conf_logprob must be a log-probability (<= 0) or null")
        return None if math.isinf(v) else min(v, 0.0)

    @property
    def confidence(self) -> float | None:
        return None if self.conf_logprob is None else math.exp(self.conf_logprob)


class OutcomeRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    qid: str = ""
    user_prompt: str
    system_prompt: str | None = None
    benchmark: str | None = None
    split: str | None = None
    category: str | None = None
    reference: str | None = None
    conf_kind: str | None = None
    models: dict[str, ModelOutcome] = Field(min_length=1)

    @field_validator("qid", mode="before")
    @classmethod
    def _qid_str(cls, v: Any) -> str:
        return "" if v is None else str(v)


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(row)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def iter_outcomes(path: str | Path) -> Iterator[tuple[int, OutcomeRecord | OutcomeFormatError]]:
    """Yield (line number, record or error) for every non-blank line."""
    p = Path(path)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield lineno, OutcomeFormatError(str(p), lineno, f"not valid JSON: {err}")
                continue
            if not isinstance(data, dict):
                yield lineno, OutcomeFormatError(str(p), lineno, "expected a JSON object")
                continue
            try:
                rec = OutcomeRecord.model_validate(data)
            except ValidationError as err:
                yield lineno, OutcomeFormatError(str(p), lineno, _reason(err))
                continue
            if not rec.qid:
                rec = rec.model_copy(update={"qid": f"line-{lineno}"})
            yield lineno, rec


@dataclass
class Outcomes:
    path: str
    records: list[OutcomeRecord] = field(default_factory=list)
    skipped: list[OutcomeFormatError] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            for m in r.models:
                seen.setdefault(m)
        return list(seen)

    def filter(self, *, benchmark: str | None = None, split: str | None = None) -> list[OutcomeRecord]:
        return [
            r
            for r in self.records
            if (benchmark is None or r.benchmark == benchmark) and (split is None or r.split == split)
        ]


def load_outcomes(path: str | Path, *, strict: bool = False) -> Outcomes:
    """Read a whole outcomes file. ``strict`` raises on the first malformed line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    out = Outcomes(str(p))
    for _, item in iter_outcomes(p):
        if isinstance(item, OutcomeFormatError):
            if strict:
                raise item
            out.skipped.append(item)
        else:
            out.records.append(item)
    return out


def prompt_key(system_prompt: str | None, user_prompt: str) -> str:
    """The key the simulator looks recorded answers up by (whitespace-normalised)."""
    return " ".join((system_prompt or "").split()) + "\x00" + " ".join(user_prompt.split())


# --- aligned to a policy's tiers (replay, calibrate) ---------------------------------------------


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
    for tier in spec.tiers:
        out = record.models.get(tier.model)
        if out is None:
            return f"model {tier.model} missing"
        if out.correct is None:
            return f"model {tier.model}: no 'correct'"
        cost = _cost(tier, out.cost_usd, out.tokens_in, out.tokens_out)
        if cost is None:
            return f"model {tier.model}: no cost_usd (and no tokens with tier prices)"
        raws.append(recorded_raw_confidence(spec, out.conf_logprob))
        correct.append(out.correct)
        costs.append(cost)
        answers.append(out.answer)
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
