"""Shadow scoring: the last tier re-answers a sample of *accepted* cheap-tier answers.

The share of samples where the two answers differ estimates the cascade's false-accept rate per
tier and revision: the quality loss that aggregate metrics hide. Shadow calls run after the client
has its answer, never delay it, and are bounded in number.

Answers are compared after normalisation (case and white space); this is exact for short answers
(labels, choices, numbers) and a lower bound on agreement for free text.

Each result also goes to ``on_result`` when set (the review store, for ``tierguard tune``): one
comparison per cheaper tier that answered the request with text (the accepted answer, and in a
longer cascade the earlier tiers' escalated ones) against the capable tier's shadow answer, with
the tier's raw and calibrated confidence and the shadow rate as inclusion probability.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..answers import answers_agree
from ..review.store import ShadowResult
from .comparisons import compare_attempts
from .decision_log import DecisionLog
from .metrics import ProxyMetrics
from .outcome import Attempt
from .runtime import RevisionRuntime
from .upstream import TierFailure, message_text

log = logging.getLogger("tierguard.proxy")
ResultHook = Callable[[list[ShadowResult]], None]


class ShadowScorer:
    def __init__(
        self,
        metrics: ProxyMetrics,
        decision_log: DecisionLog,
        seed: int | None = None,
        on_result: ResultHook | None = None,
    ) -> None:
        self.metrics = metrics
        self.decision_log = decision_log
        self.rng = random.Random(seed)
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_result = on_result

    def maybe_sample(
        self,
        rev: RevisionRuntime,
        answered: int,
        rate: float,
        max_in_flight: int,
        request: dict[str, Any],
        answer: str,
        response_id: str,
        attempts: Sequence[Attempt] = (),
    ) -> bool:
        """Start a shadow call for this accepted answer with probability ``rate`` (``attempts``:
        the request's tier calls, for the comparisons handed to ``on_result``)."""
        if rate <= 0.0 or rev.capable_only or answered >= len(rev.clients) - 1:
            return False
        if self.rng.random() >= rate:
            return False
        if len(self.tasks) >= max_in_flight:
            self.metrics.shadow_skipped.labels(self.metrics.policy, "busy").inc()
            return False
        task = asyncio.create_task(self._run(rev, answered, request, answer, response_id, attempts, rate))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(
        self,
        rev: RevisionRuntime,
        answered: int,
        request: dict[str, Any],
        answer: str,
        response_id: str,
        attempts: Sequence[Attempt] = (),
        rate: float = 0.0,
    ) -> None:
        m = self.metrics
        capable = rev.clients[-1]
        body = {
            k: v
            for k, v in request.items()
            if k not in ("stream", "stream_options", "logprobs", "top_logprobs")
        }
        try:
            comp = await capable.complete(body, logprobs=False)
        except TierFailure:
            m.shadow_skipped.labels(m.policy, "error").inc()
            return
        tier = rev.clients[answered].tier.name
        capable_text = message_text(comp.body)
        agree = answers_agree(answer, capable_text)
        cost = capable.tier.cost_usd(comp.tokens_in, comp.tokens_out)
        m.shadow_samples.labels(m.policy, rev.name, tier).inc()
        if not agree:
            m.shadow_disagreements.labels(m.policy, rev.name, tier).inc()
        m.shadow_cost.labels(m.policy, rev.name).inc(cost)
        self.decision_log.write(
            {
                "event": "shadow",
                "ts": time.time(),
                "id": response_id,
                "policy": m.policy,
                "revision": rev.name,
                "tier": tier,
                "shadow_tier": capable.tier.name,
                "agree": agree,
                "cost_usd": cost,
            }
        )
        if self.on_result is not None:
            results = compare_attempts(
                response_id=response_id,
                policy=m.policy,
                revision=rev.name,
                spec=rev.revision.cascade,
                attempts=attempts,
                answered=tier,
                served=answer,
                capable=capable_text,
                probability=rate,
                source="shadow",
                cost_usd=cost,
            )
            try:
                self.on_result(results)
            except Exception:  # the hook must never break shadow scoring
                log.exception("shadow result hook failed")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
