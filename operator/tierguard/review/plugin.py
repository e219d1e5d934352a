"""Review sampling and outcome events inside the proxy: one object the proxy holds.

It follows the proxy's config: ``settings.review`` (sampling and the store) and
``settings.outcomes`` (the events accepted by ``POST /v1/outcomes``). A reload that changes the
review settings starts a new sampler and writer (the old writer finishes its queue); one that
keeps them keeps both. Nothing here blocks a request: see :mod:`.observer` and :mod:`.writer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from ..policy import OutcomeSpec, ProxySettings, ReviewSpec
from .metrics import ReviewMetrics
from .novelty import NoveltyReference
from .observer import Answered, ReviewSampling
from .outcome_endpoint import OutcomeEndpoint
from .outcome_events import Decided
from .store import ShadowResult, Store, open_store
from .writer import ReviewWriter

log = logging.getLogger("tierguard.review")
DEFAULT_OUTCOMES = OutcomeSpec()


class ReviewPlugin:
    def __init__(
        self,
        registry: CollectorRegistry,
        policy: Callable[[], str],
        verify: Callable[[Any], Decided],
        decision_log: Callable[[dict[str, Any]], None],
    ) -> None:
        self.metrics = ReviewMetrics(registry)
        self.policy = policy
        self.spec: ReviewSpec | None = None
        self.outcome_spec: OutcomeSpec = DEFAULT_OUTCOMES
        self.sampling: ReviewSampling | None = None
        self._events_store: Store | None = None
        self._events_url = ""
        self.outcomes = OutcomeEndpoint(
            self.metrics, verify, lambda: self.outcome_spec, policy, self._store, decision_log
        )

    def _store(self) -> Store | None:
        """The store outcome events go to (called off the event loop; raises StoreError when it
        cannot be opened). A connection of its own, apart from the sampling writer's."""
        spec = self.spec
        if spec is None:
            return None
        if self._events_store is None or self._events_url != spec.store:
            if self._events_store is not None:
                self._events_store.close()
                self._events_store = None
            self._events_store = open_store(spec.store)
            self._events_url = spec.store
        return self._events_store

    def _drop(self, reason: str, n: int) -> None:
        self.metrics.dropped.labels(self.policy(), reason).inc(n)

    def load_novelty(self, spec: ReviewSpec | None) -> NoveltyReference | None:
        """The novelty reference a review spec names (ValueError when unreadable); the one in
        use when the spec did not change."""
        if spec is None or spec.novelty_reference is None:
            return None
        if spec == self.spec and self.sampling is not None:
            return self.sampling.novelty
        return NoveltyReference.load(spec.novelty_reference)

    def apply(self, settings: ProxySettings, novelty: NoveltyReference | None) -> None:
        """Follow new settings (``novelty`` loaded beforehand with :meth:`load_novelty`)."""
        self.outcome_spec = settings.outcomes or DEFAULT_OUTCOMES
        spec = settings.review
        if spec == self.spec:
            return
        old, self.spec = self.sampling, spec
        self.sampling = None
        if spec is not None:
            url = spec.store
            writer = ReviewWriter(
                lambda: open_store(url),
                queue_size=spec.queue_size,
                on_drop=self._drop,
                retention_s=spec.retention_days * 86400.0,
            )
            self.sampling = ReviewSampling(spec, self.metrics, writer, novelty)
            log.info("review sampling on: rate %g, store %s", spec.rate, url.split("@")[-1])
        if old is not None:
            old.close()

    def observe(self, answered: Answered) -> None:
        if self.sampling is not None:
            self.sampling.observe(answered)

    def observe_comparisons(self, results: Sequence[ShadowResult]) -> None:
        """Comparisons of cheaper answers with the capable tier's (shadow calls, escalated
        requests), kept in the store for ``tierguard tune``; dropped (and counted) like items."""
        if self.sampling is not None:
            for r in results:
                self.sampling.writer.offer(r)

    def close(self) -> None:
        if self.sampling is not None:
            self.sampling.close()
            self.sampling = None
        if self._events_store is not None:
            self._events_store.close()
            self._events_store = None
