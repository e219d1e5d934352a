"""``POST /v1/outcomes``: outcome events checked (:mod:`.outcome_events`), de-duplicated and counted.
``POST /v1/feedback``'s thumbs go the same way, as the event ``thumbs``
(:meth:`OutcomeEndpoint.record_feedback`).

With a review store, a duplicate (the same event name for the same response) is rejected across
replicas by the store's primary key; without one, per replica only (the last 100,000 per replica).
A store that is down answers 503 (retry later): an event is never half-recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..policy import OutcomeSpec
from .metrics import ReviewMetrics
from .outcome_events import (
    Accepted,
    BadBatch,
    Decided,
    Rejected,
    batch_items,
    check_event,
    id_age_problem,
    reply,
)
from .store import Event, Store, StoreError


def _error(
    status: int, message: str, etype: str, param: str | None = None, code: str | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": etype, "param": param, "code": code}}, status=status
    )


class RecentKeys:
    """The last ``capacity`` keys seen on this replica (without a store: duplicates per replica)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True if the key is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


class OutcomeEndpoint:
    def __init__(
        self,
        metrics: ReviewMetrics,
        verify: Callable[[Any], Decided],
        spec: Callable[[], OutcomeSpec],
        policy: Callable[[], str],
        store: Callable[[], Store | None],
        log: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.verify = verify  # raises IdRejected for an id the proxies did not sign
        self.spec = spec
        self.policy = policy
        self.store = store
        self.log = log
        self.clock = clock
        self.seen = RecentKeys()

    async def handle(self, request: web.Request) -> web.Response:
        policy = self.policy()
        try:
            raw = await request.read()
            items = batch_items(json.loads(raw))
        except web.HTTPRequestEntityTooLarge:
            self.metrics.outcome_rejected.labels(policy, "too_large").inc()
            return _error(413, "request body too large", "invalid_request_error")
        except (ValueError, UnicodeDecodeError) as err:
            self.metrics.outcome_rejected.labels(policy, "malformed").inc()
            param = err.param if isinstance(err, BadBatch) else None
            message = str(err) if isinstance(err, BadBatch) else "the request body is not valid JSON"
            return _error(400, message, "invalid_request_error", param, "malformed")
        now = self.clock()
        spec = self.spec()
        results: list[Accepted | Rejected] = [
            check_event(i, e, spec, self.verify, now) for i, e in enumerate(items)
        ]
        accepted = [r for r in results if isinstance(r, Accepted)]
        fresh = await self._dedupe(policy, accepted, now)
        if fresh is None:
            return _error(503, "the review store is unavailable; retry later", "store_unavailable")
        for k, r in enumerate(accepted):
            if not fresh[k]:
                results[r.index] = Rejected(
                    r.index,
                    "duplicate",
                    f"events[{r.index}]: {r.name} already recorded for this response",
                    f"events[{r.index}].id",
                )
                continue
            self.metrics.outcomes.labels(policy, r.revision, r.tier, r.name).inc()
            self.metrics.outcome_value.labels(policy, r.revision, r.tier, r.name).inc(r.value)
            self.log(
                {
                    "event": "outcome",
                    "ts": now,
                    "id": r.response_id,
                    "policy": policy,
                    "revision": r.revision,
                    "tier": r.tier,
                    "name": r.name,
                    "value": r.value,
                    "outcome_ts": r.ts,
                }
            )
        for res in results:
            if isinstance(res, Rejected):
                self.metrics.outcome_rejected.labels(policy, res.reason).inc()
        status, body = reply(results)
        return web.json_response(body, status=status)

    async def record_feedback(self, policy: str, response_id: str, decision: Decided, up: bool) -> str:
        """A thumbs rating from ``POST /v1/feedback`` as the outcome event ``thumbs`` (1 up, 0
        down): refused when the id is older than ``maxAge`` (or carries no issue time), and
        de-duplicated with every other outcome event (across replicas through the store). Returns
        ``recorded``, ``duplicate``, ``expired``, ``no_issue_time`` or ``store_unavailable``."""
        now = self.clock()
        too_old = id_age_problem(decision, self.spec(), now)
        if too_old is not None:
            return too_old
        assert decision.issued is not None
        value, issued = (1.0 if up else 0.0), decision.issued
        event = Accepted(0, response_id, "thumbs", value, now, issued, decision.revision, decision.tier)
        fresh = await self._dedupe(policy, [event], now)
        if fresh is None:
            return "store_unavailable"
        return "recorded" if fresh[0] else "duplicate"

    async def _dedupe(self, policy: str, accepted: list[Accepted], now: float) -> list[bool] | None:
        """Per accepted event, True when it is new; None when the store is down. The store is
        looked up (and opened, when it must be) off the event loop."""
        if not accepted:
            return []
        events = [
            Event(r.response_id, r.name, r.value, now, r.issued, policy, r.revision, r.tier) for r in accepted
        ]

        def add() -> list[bool] | None:
            store = self.store()
            return None if store is None else store.add_events(events)

        try:
            fresh = await asyncio.to_thread(add)
        except StoreError:
            return None
        if fresh is None:  # no store configured: this replica's memory
            return [self.seen.add(f"{r.response_id}|{r.name}") for r in accepted]
        return fresh
