"""After each request: one :class:`Decision`, fanned out to every observer.

The proxy builds one :class:`Decision` when a chat request ends (answered, failed, or cut off by
the client) and hands it to each registered observer in turn. What an observer receives:

- ``policy``: the policy name; ``runtime``: the applied configuration the request ran under
  (``runtime.config_hash``, ``runtime.config.settings``);
- ``request``: the validated request body (``messages``, ``stream``, ``user``, ...);
- ``revision``: the :class:`~tierguard.proxy.runtime.RevisionRuntime` that served it (its
  ``revision`` model, ``name``, ``clients`` = the tiers in order, ``capable_only``);
- ``attempts``: every tier call made, in order (:class:`~tierguard.proxy.outcome.Attempt`: tier
  name, :class:`~tierguard.cascade.Judgement` with reason and raw/calibrated confidence, latency,
  tokens, cost, error);
- ``answered`` / ``answered_tier``: the index and name of the tier whose answer the client got
  (None / ``"none"`` when none did); ``status``: ``ok``, ``error`` or ``client_error``;
  ``failure``: the :class:`~tierguard.proxy.upstream.TierFailure` that ended it, if any;
- ``answer``: the answer text once the client has received it in full (None otherwise);
- ``response_id``: the signed id the client got ("" when none was issued; feedback quotes it);
- ``latency_s``: end to end, from the request's arrival; ``cost_usd``: the sum over attempts;
- ``start``: the tier index the turn started at (conversation affinity; 0 otherwise);
  ``conversation``: the client's conversation id, if any; ``answer_kind``: ``text`` or
  ``tool_call`` (None when nothing was answered).

An observer is anything with ``observe(decision) -> None``. It runs on the event loop, after the
handler has its response and before that response is finished, so it must be quick and must not
block: start a task for anything slow (the shadow observer does). It must not change the decision.
An observer that raises is logged and skipped; the others still run.

The standard observers live in :mod:`tierguard.proxy.observers` (metrics, confidence drift,
decision log, shadow scoring). A new capability that needs to see each decision (review sampling,
conversation affinity, outcome joins) is one more observer: ``recorder.add(observer)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .outcome import Attempt, Outcome
from .runtime import RevisionRuntime, Runtime
from .upstream import TierFailure

log = logging.getLogger("tierguard.proxy")


@dataclass(slots=True)
class Decision:
    """One chat request, as it ended. Observers read it and never change it (it is not frozen:
    a frozen dataclass costs microseconds per request to build)."""

    policy: str
    runtime: Runtime
    request: dict[str, Any]
    revision: RevisionRuntime
    attempts: Sequence[Attempt]
    answered: int | None
    answered_tier: str
    status: str
    failure: TierFailure | None
    answer: str | None
    response_id: str
    latency_s: float
    cost_usd: float
    start: int = 0
    conversation: str | None = None
    answer_kind: str | None = None

    @classmethod
    def of(
        cls, policy: str, runtime: Runtime, request: dict[str, Any], outcome: Outcome, latency_s: float
    ) -> Decision:
        failure = outcome.failure
        answered = outcome.answered
        if failure is not None and failure.kind == "client_error":
            status = "client_error"
        elif failure is not None or answered is None:
            status = "error"
        else:
            status = "ok"
        cost = 0.0
        for a in outcome.attempts:
            cost += a.cost_usd
        rev = outcome.revision
        tier = "none" if answered is None else rev.clients[answered].tier.name
        # positional, in field order: the cheapest way to build it once per request
        return cls(
            policy, runtime, request, rev, outcome.attempts, answered, tier, status, failure,
            outcome.answer, outcome.response_id, latency_s, cost,
            outcome.start, outcome.conversation, outcome.answer_kind,
        )  # fmt: skip

    @property
    def reason(self) -> str | None:
        """Why the last tier tried ended the cascade (the last attempt's judgement reason)."""
        j = self.attempts[-1].judgement if self.attempts else None
        return j.reason if j else None


class Observer(Protocol):
    def observe(self, decision: Decision) -> None: ...


class Recorder:
    """Hands each request's :class:`Decision` to every observer, in the order they were added."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def record(self, decision: Decision) -> None:
        for observer in self.observers:
            try:
                observer.observe(decision)
            except Exception:
                log.exception("observer %s failed on a decision", type(observer).__name__)
