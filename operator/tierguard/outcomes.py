"""Recorded model outcomes: the JSONL format read by ``tierguard sim``, ``replay`` and ``calibrate``.

One JSON object per line (see docs/outcomes-format.md)::

    {"qid": "q-1", "user_prompt": "...", "system_prompt": "...", "benchmark": "mmlu",
     "split": "train", "category": "anatomy",
     "models": {"gpt-4o-mini": {"answer": "B", "correct": true, "conf_logprob": -0.23,
                                "latency_ms": 684.4, "tokens_in": 128, "tokens_out": 1,
                                "cost_usd": 1.98e-05}}}

Only ``user_prompt`` (or ``messages``) and ``models.*.answer`` (or ``models.*.tool_calls``) are
required. Agent traffic adds ``messages`` (the conversation up to this turn), ``tools``,
``response_format``, ``conversation_id`` and ``turn``; an outcome may be a tool call
(``tool_calls: [{"name", "arguments"}]``). A malformed line is reported with its line number;
lenient loading skips it and counts it, strict loading stops at it.

:func:`load_dataset` aligns the records to a policy's tiers for ``replay`` and ``calibrate``: one
:class:`Row` per query that every tier answered. A tier's raw confidence comes from
:func:`tierguard.judging.recorded_raw_confidence` on the recorded log-probability (one answer
token: ``exp(conf_logprob)``), so replay sees exactly the number the proxy would compute. A
tool-call answer or a structured output gets the raw confidence the proxy's checks give it
(:func:`tierguard.judging.effective_raw`). A row whose tier model is missing, or lacks
``correct``, or has no cost (neither ``cost_usd`` nor tokens with tier prices) cannot be scored:
it is skipped and counted with its reason, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import OutcomeFormatError
from .judging import check_answer, effective_raw, recorded_raw_confidence
from .policy import CascadeSpec, Tier
from .toolcalls import ToolCall


class RecordedToolCall(BaseModel):
    """One function call a model answered with; ``arguments`` as the model wrote them (JSON text,
    possibly invalid; an object is serialised)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


class ModelOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    answer: str = ""
    tool_calls: list[RecordedToolCall] | None = Field(
        default=None, min_length=1, description="The answer was these tool calls (content empty)."
    )
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

    @model_validator(mode="before")
    @classmethod
    def _answer_or_calls(cls, data: Any) -> Any:
        if isinstance(data, dict) and "answer" not in data and not data.get("tool_calls"):
            raise ValueError("answer: Field required (or give tool_calls)")
        return data

    @property
    def confidence(self) -> float | None:
        return None if self.conf_logprob is None else math.exp(self.conf_logprob)

    def as_text(self) -> str:
        """The answer as one comparable string: the text, or the calls as ``name(args)``."""
        if not self.tool_calls:
            return self.answer
        return "; ".join(f"{c.name}({canonical_arguments(c.arguments)})" for c in self.tool_calls)


class OutcomeRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    qid: str = ""
    user_prompt: str
    messages: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, description="The conversation up to this turn (OpenAI chat messages)."
    )
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    conversation_id: str | None = None
    turn: int | None = Field(default=None, ge=0)
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

    @model_validator(mode="before")
    @classmethod
    def _prompts_from_messages(cls, data: Any) -> Any:
        """A conversation row needs no separate user/system prompt: they come from ``messages``."""
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            return data
        msgs = [m for m in data["messages"] if isinstance(m, dict)]
        if len(msgs) != len(data["messages"]):
            raise ValueError("messages: every message must be an object")
        out = dict(data)
        if "user_prompt" not in out:
            first = next((m for m in msgs if m.get("role") == "user"), None)
            if first is None:
                raise ValueError("messages: no message with role 'user'")
            out["user_prompt"] = content_text(first.get("content"))
        if "system_prompt" not in out:
            system = [
                content_text(m.get("content")) for m in msgs if m.get("role") in ("system", "developer")
            ]
            out["system_prompt"] = "\n".join(system) or None
        return out

    @property
    def has_tool_calls(self) -> bool:
        return any(o.tool_calls for o in self.models.values())


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


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of an array joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def canonical_arguments(arguments: str) -> str:
    """Tool-call arguments in one form: sorted compact JSON when they parse, else trimmed text."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return " ".join(arguments.split())


def _message_line(msg: Any) -> str:
    if not isinstance(msg, dict):
        return "?"
    parts = [str(msg.get("role")), " ".join(content_text(msg.get("content")).split())]
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict):
                args = fn.get("arguments")
                args = args if isinstance(args, str) else json.dumps(args)
                parts.append(f"{fn.get('name')}({canonical_arguments(args)})")
    return "\x1f".join(parts)


def conversation_key(messages: Sequence[Any]) -> str:
    """The key a whole conversation is looked up by: every message's role, whitespace-normalised
    text and tool calls (canonical arguments); tool-call ids are left out (a client echoes the
    ids it was given, which differ per run). A SHA-256 digest, so long conversations stay small."""
    blob = "\x1e".join(_message_line(m) for m in messages)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
        calls = [ToolCall("", c.name, c.arguments) for c in out.tool_calls or ()]
        # a tool call or a structured output is judged as the proxy judges it
        check = check_answer(spec, i, calls, out.answer, request)
        raws.append(effective_raw(check, recorded_raw_confidence(spec, out.conf_logprob)))
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
