"""Recorded model outcomes: the JSONL format read by ``tierguard sim``, ``replay`` and ``calibrate``.

One JSON object per line (see docs/outcomes-format.md)::

    {"qid": "q-1", "user_prompt": "...", "system_prompt": "...", "benchmark": "mmlu",
     "split": "train", "category": "anatomy",
     "models": {"gpt-4o-mini": {"answer": "B", "correct": true, "conf_logprob": -0.23,
                                "latency_ms": 684.4, "tokens_in": 128, "tokens_out": 1,
                                "cost_usd": 1.98e-05}}}

Only ``user_prompt`` and ``models.*.answer`` are required. A malformed line is reported with its
line number; lenient loading skips it and counts it, strict loading stops at it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator


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


class OutcomeFormatError(ValueError):
    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


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
