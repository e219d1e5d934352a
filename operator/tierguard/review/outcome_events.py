"""Outcome events joined to routing decisions: the checks, free of I/O.

``POST /v1/outcomes`` takes one event or a batch::

    {"id": "chatcmpl-tg1...", "event": "refund", "value": 12.5, "ts": 1790000000}
    {"events": [{...}, {...}]}

``event`` must be one of the configured names (``OutcomeSpec.events``) and ``value`` (default 1)
inside its range; ``ts`` (when the outcome happened; default now) may not precede the answer nor
lie in the future. The response id must be one this policy's proxies signed, carry its issue time,
and be younger than ``OutcomeSpec.maxAge``. Each event is checked on its own: a batch is accepted
item by item and the reply says which items failed and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..policy import OutcomeSpec, parse_duration

MAX_BATCH = 1000
CLOCK_SKEW_S = 300.0


class Decided(Protocol):
    @property
    def revision(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def issued(self) -> float | None: ...


class IdRejected(Exception):
    """Raised by the verifier for an id the proxies did not sign (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Accepted:
    index: int
    response_id: str
    name: str
    value: float
    ts: float
    issued: float
    revision: str
    tier: str


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    # malformed | unknown_event | bad_value | bad_ts | expired | no_issue_time | duplicate | an id's
    reason: str
    message: str
    param: str | None = None


class BadBatch(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def batch_items(body: Any) -> list[Any]:
    """The events of a request body (one event or ``{"events": [...]}``)."""
    if not isinstance(body, dict):
        raise BadBatch('the request body must be a JSON object: one event or {"events": [...]}')
    if "events" not in body:
        return [body]
    events = body["events"]
    if not isinstance(events, list) or not events:
        raise BadBatch("'events' must be a non-empty array", "events")
    if len(events) > MAX_BATCH:
        raise BadBatch(f"a batch holds at most {MAX_BATCH} events, got {len(events)}", "events")
    return events


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def id_age_problem(decision: Decided, spec: OutcomeSpec, now: float) -> str | None:
    """Why an event can no longer be joined to this answer (``no_issue_time``: an id from before
    ids carried their time; ``expired``: older than ``maxAge``), or None."""
    if decision.issued is None:
        return "no_issue_time"
    if now - decision.issued > parse_duration(spec.max_age):
        return "expired"
    return None


def check_event(
    index: int,
    raw: Any,
    spec: OutcomeSpec,
    verify: Callable[[Any], Decided],
    now: float,
) -> Accepted | Rejected:
    """One event of a batch, checked against the configured events and the signed id."""
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        return Rejected(index, "malformed", f"{where} must be an object", where)
    name = raw.get("event")
    ranges = {e.name: e for e in spec.events}
    if not isinstance(name, str) or name not in ranges:
        known = ", ".join(sorted(ranges))
        return Rejected(index, "unknown_event", f"{where}.event must be one of: {known}", f"{where}.event")
    value = _number(raw.get("value", 1))
    rng = ranges[name]
    if value is None or not rng.min <= value <= rng.max:
        return Rejected(
            index,
            "bad_value",
            f"{where}.value must be a number from {rng.min:g} to {rng.max:g}",
            f"{where}.value",
        )
    try:
        decision = verify(raw.get("id"))
    except IdRejected as err:
        return Rejected(index, err.reason, f"{where}.id: unknown response id ({err.reason})", f"{where}.id")
    too_old = id_age_problem(decision, spec, now)
    if too_old == "no_issue_time":
        return Rejected(
            index, "no_issue_time", f"{where}.id was issued before ids carried their time", f"{where}.id"
        )
    if too_old == "expired":
        return Rejected(index, "expired", f"{where}.id is older than {spec.max_age}", f"{where}.id")
    assert decision.issued is not None
    ts = _number(raw.get("ts", now))
    if ts is None or ts < decision.issued - CLOCK_SKEW_S or ts > now + CLOCK_SKEW_S:
        return Rejected(
            index, "bad_ts", f"{where}.ts must be a Unix time between the answer and now", f"{where}.ts"
        )
    return Accepted(index, str(raw["id"]), name, value, ts, decision.issued, decision.revision, decision.tier)


def reply(results: list[Accepted | Rejected]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for a checked (and stored) batch.

    All accepted: 200. Some accepted: 207 with the failed items. None accepted: 409 when every
    failure is a duplicate, else 400; the body is an OpenAI-style error plus the items.
    """
    items = [
        {"index": r.index, "status": "accepted"}
        if isinstance(r, Accepted)
        else {"index": r.index, "status": "rejected", "reason": r.reason, "message": r.message}
        for r in results
    ]
    rejected = [r for r in results if isinstance(r, Rejected)]
    accepted = len(results) - len(rejected)
    body: dict[str, Any] = {"accepted": accepted, "rejected": len(rejected), "results": items}
    if not rejected:
        return 200, body
    first = rejected[0]
    body["error"] = {
        "message": f"{len(rejected)} of {len(results)} events rejected; first: {first.message}",
        "type": "invalid_request_error",
        "param": first.param,
        "code": first.reason if len({r.reason for r in rejected}) == 1 else "mixed",
    }
    if accepted:
        return 207, body
    return (409 if all(r.reason == "duplicate" for r in rejected) else 400), body
