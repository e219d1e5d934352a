"""A CascadePolicy's ``.status``: everything a restarted operator needs to resume a rollout.

Phases (``status.phase``)
-------------------------
``Pending``
    No revision has been started yet (a new object, before the first reconcile).
``Progressing``
    A canary revision is live at ``canaryWeight`` percent and analysed every interval. A timed
    pause at the current step also shows as ``Progressing`` (the message says until when).
``Paused``
    The current step has an indefinite pause: analysis keeps running (a breach still rolls back),
    but the step only advances on a manual ``promote`` (or ``resume``).
``Succeeded``
    The last revision was promoted: ``stable`` serves it, no canary, weight 0. Terminal until the
    spec changes.
``RolledBack``
    SLO breaches reached the failure threshold: canary weight 0, the canary is kept for inspection.
    Terminal until the spec changes, or ``resume`` (retry from step 0) or ``promote --full``.
``Aborted``
    An SRE aborted the rollout: like ``RolledBack`` but by hand.
``Invalid``
    The policy passed the schema but cannot work (unknown SLO, bad query template, ...). Nothing is
    touched; ``Ready=False`` says what to fix. Set by the reconciler, not by :func:`decide`.

The stable and canary :class:`~tierguard.policy.Revision` snapshots are kept in full, so the
proxy's config can be rendered again after a restart even though the spec has moved on
(:func:`tierguard.kube.render.proxy_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError

from ..policy import Revision
from .conditions import Condition
from .status_base import StatusModel

Phase = Literal["Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Aborted", "Invalid"]
PHASES: tuple[Phase, ...] = (
    "Pending",
    "Progressing",
    "Paused",
    "Succeeded",
    "RolledBack",
    "Aborted",
    "Invalid",
)
ROLLING: frozenset[str] = frozenset({"Progressing", "Paused"})
"""Phases in which a canary takes traffic and :func:`~tierguard.rollout.decide.decide` acts."""

CheckVerdict = Literal["PASS", "BREACH", "NO_DATA", "ERROR"]
ManualAction = Literal["promote", "abort", "resume"]


class CheckResult(StatusModel):
    """One objective evaluated for one tier of the canary in one analysis."""

    slo: str
    objective: str
    tier: str | None = Field(default=None, description="The tier; omitted for a revision-wide check.")
    revision: str
    verdict: CheckVerdict
    value: float | None = Field(default=None, description="The canary's value; omitted without data.")
    bound: float | None = Field(
        default=None, description="The bound the value was held to (the one breached)."
    )
    stable_value: float | None = Field(
        default=None, description="The stable revision's value (relative bounds)."
    )
    message: str = ""


AnalysisResult = Literal["Pass", "Breach", "NoData", "TooFewSamples", "ProviderError", "StaleConfig"]


class Analysis(StatusModel):
    """The outcome of one analysis interval."""

    time: datetime
    result: AnalysisResult
    counted: bool = Field(description="Whether the interval counted (conclusive, on the current config).")
    config_current: bool = True
    samples: dict[str, int] = Field(
        default_factory=dict, description="Canary requests per tier in the window."
    )
    checks: list[CheckResult] = Field(default_factory=list)
    message: str = ""


class ActionRecord(StatusModel):
    """The last manual action applied (so an annotation is not applied twice)."""

    action: ManualAction
    time: datetime
    token: str | None = Field(default=None, description="The annotation value that requested it.")


ShadowReason = Literal[
    "Base",
    "RaisedForSamples",
    "CappedByBudget",
    "CappedByMaxRate",
    "NoTrafficObserved",
    "NoCostObserved",
    "ProviderError",
]


class ShadowStatus(StatusModel):
    """The shadow rate the operator chose (``spec.proxy.shadowBudget``; docs/rollout.md)."""

    revision: str | None = Field(
        default=None, description="The canary revision the rate applies to; omitted: every revision."
    )
    rate: float = Field(ge=0.0, le=1.0, description="The shadow rate of that revision.")
    base_rate: float = Field(ge=0.0, le=1.0, description="spec.proxy.shadowRate: every other revision's.")
    reason: ShadowReason
    expected_spend_per_hour: float | None = Field(
        default=None,
        description="Expected shadow spend in USD per hour at the observed traffic (every revision); "
        "omitted when unknown.",
    )
    max_spend_per_hour: float = Field(description="spec.proxy.shadowBudget.maxSpendPerHour.")
    message: str = ""
    time: datetime = Field(description="When the rate was chosen.")


class PolicyStatus(StatusModel):
    phase: Phase = "Pending"
    observed_generation: int | None = Field(default=None, ge=0)
    stable_revision: str | None = None
    canary_revision: str | None = None
    canary_weight: int = Field(default=0, ge=0, le=100)
    current_step: int = Field(default=0, ge=0, description="Index into spec.rollout.steps.")
    step_started_at: datetime | None = Field(
        default=None, description="When the current step's weight was set."
    )
    rollout_started_at: datetime | None = None
    failed_checks: int = Field(default=0, ge=0, description="Breaching analyses of the current canary.")
    last_analysis: Analysis | None = None
    conditions: list[Condition] = Field(default_factory=list)
    message: str | None = None
    stable: Revision | None = Field(default=None, description="Snapshot of the stable revision.")
    canary: Revision | None = Field(default=None, description="Snapshot of the canary revision.")
    config_hash: str | None = Field(
        default=None,
        description="Hash of the proxy config rendered for this status (set by the reconciler after "
        "writing it); analysis only counts intervals in which every proxy reports it.",
    )
    last_action: ActionRecord | None = None
    previous_phase: Phase | None = Field(default=None, description="The phase before it became Invalid.")
    shadow: ShadowStatus | None = Field(
        default=None, description="The operator-managed shadow rate (with spec.proxy.shadowBudget)."
    )

    @property
    def rolling(self) -> bool:
        return self.phase in ROLLING and self.canary is not None


class StatusError(ValueError):
    """A stored status that cannot be read back (edited by hand, or from an incompatible version)."""


def parse_status(data: Mapping[str, Any] | None) -> PolicyStatus:
    """Read ``.status`` of a CascadePolicy (None or ``{}`` is a fresh ``Pending`` status).

    Unknown keys (e.g. kopf's own bookkeeping) are ignored.
    """
    if not data:
        return PolicyStatus()
    try:
        return PolicyStatus.model_validate(dict(data))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise StatusError(f"cannot read the stored status: {problems}") from None
