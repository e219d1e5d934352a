"""Approval of tuned revisions (pure): the record `tierguard tune --apply` leaves on the policy and
the rollout a revision it wrote gets.

``tierguard tune --apply`` writes the tuned spec and, in the same conditional PATCH, the
annotation ``tierguard.io/tuned``: a JSON :class:`TunedRecord` naming the revision it wrote, the
revision it started from, how many labels it used, each threshold it changed and the approval
mode. When the operator starts the rollout of the spec's revision and the record names that very
revision with ``approval: manual``, the rollout's first step gets an indefinite pause: the canary
serves the first step's weight under the SLO gates (a breach still rolls back) and goes no further
until a person runs ``tierguard promote`` or ``tierguard resume`` (the same mechanism as any
``pause: indefinite`` step). Any other spec change has another revision, so the record no longer
applies to it; nothing here is remembered between reconciles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .. import API_GROUP
from ..policy import RolloutSpec

TUNED_ANNOTATION = f"{API_GROUP}/tuned"
Approval = Literal["manual", "auto"]


@dataclass(frozen=True)
class ThresholdChange:
    tier: str
    old: float
    new: float
    labels: int
    reason: str


@dataclass(frozen=True)
class TunedRecord:
    revision: str  # the revision tune wrote
    previous: str  # the spec's revision before
    labels: int  # labelled review items read
    approval: Approval
    time: str  # RFC 3339
    changes: list[ThresholdChange] = field(default_factory=list)
    rows: int = 0  # production comparisons the change was certified on

    def to_annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | None) -> TunedRecord | None:
        """The record in an annotation value; None when absent or unreadable (a hand edit)."""
        if not raw:
            return None
        try:
            data: Any = json.loads(raw)
            changes = [ThresholdChange(**c) for c in data.get("changes") or []]
            approval = data["approval"]
            if approval not in ("manual", "auto"):
                return None
            return cls(
                revision=str(data["revision"]),
                previous=str(data.get("previous", "")),
                labels=int(data.get("labels", 0)),
                approval=approval,
                time=str(data.get("time", "")),
                changes=changes,
                rows=int(data.get("rows", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def summary(self) -> str:
        moved = ", ".join(f"{c.tier} {c.old:g} -> {c.new:g}" for c in self.changes) or "no threshold"
        return f"tuned on {self.rows} production comparisons ({self.labels} review labels): {moved}"


def awaits_approval(record: TunedRecord | None, revision: str) -> bool:
    """Whether ``revision``'s rollout must wait for a person: tune wrote it with manual approval."""
    return record is not None and record.approval == "manual" and record.revision == revision


def gated_rollout(rollout: RolloutSpec, record: TunedRecord | None, revision: str) -> RolloutSpec:
    """The rollout ``revision`` gets: the spec's, with an indefinite pause on the first step when
    :func:`awaits_approval`. Deterministic in its inputs, so every reconcile of the same rollout
    sees the same steps."""
    if not awaits_approval(record, revision):
        return rollout
    first = rollout.steps[0].model_copy(update={"pause": "indefinite"})
    return rollout.model_copy(update={"steps": [first, *rollout.steps[1:]]})
