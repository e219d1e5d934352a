"""kstatus-style conditions (``metav1.Condition``) kept in a policy's status.

Types used by tierguard:

``Ready``
    True once the stable revision serves the spec's revision (phase ``Succeeded``); False while a
    rollout is in progress, after a rollback or abort, and for invalid policies.
``Progressing``
    True while a canary is being analysed and moved through the steps; the reason says what the
    last analysis saw (``StepAdvanced``, ``NoData``, ``TooFewSamples``, ``ProviderError``, ...).
    False with ``ProgressDeadlineExceeded`` once the progress deadline passed (as a Deployment's).
``Degraded``
    True after an automatic rollback (``RolledBack``), an abort (``Aborted``), for an invalid spec
    (``InvalidSpec``), or when the progress deadline passed without progress
    (``ProgressDeadlineExceeded``).

The generic kstatus names are mirrored so that tools reading only those (Flux, ``kubectl wait``,
cli-utils' kstatus) understand the object without custom health checks: ``Reconciling`` mirrors
``Progressing`` and ``Stalled`` mirrors ``Degraded``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import Field

from .status_base import StatusModel

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RECONCILING = "Reconciling"
STALLED = "Stalled"

MIRRORS = {PROGRESSING: RECONCILING, DEGRADED: STALLED}


class Condition(StatusModel):
    """One condition, shaped like Kubernetes' ``metav1.Condition``."""

    type: str = Field(min_length=1, max_length=316)
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for c in conditions:
        if c.type == type_:
            return c
    return None


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    c = get_condition(conditions, type_)
    return c is not None and c.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
    *,
    mirror: bool = True,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` only moves when the status
    changes. ``Progressing``/``Degraded`` also set their kstatus mirrors (``Reconciling``/``Stalled``).
    """
    st: ConditionStatus = ("True" if status else "False") if isinstance(status, bool) else status
    previous = get_condition(conditions, type_)
    updated = Condition(
        type=type_,
        status=st,
        reason=reason,
        message=message,
        last_transition_time=(
            previous.last_transition_time if previous is not None and previous.status == st else now
        ),
        observed_generation=observed_generation,
    )
    if previous is None:
        out = [*conditions, updated]
    else:
        out = [updated if c.type == type_ else c for c in conditions]
    if mirror and type_ in MIRRORS:
        out = set_condition(out, MIRRORS[type_], st, reason, message, now, observed_generation, mirror=False)
    return out


def set_conditions(
    conditions: Sequence[Condition],
    now: datetime,
    observed_generation: int | None,
    **by_type: tuple[bool, str, str],
) -> list[Condition]:
    """Set several conditions at once: ``Ready=(False, "RolloutInProgress", "...")``."""
    out = list(conditions)
    for type_, (status, reason, message) in by_type.items():
        out = set_condition(out, type_, status, reason, message, now, observed_generation)
    return out
