"""Shadow scoring: the last tier re-answers a sample of *accepted* cheap-tier answers.

The share of samples where the two answers differ estimates the cascade's false-accept rate per
tier and revision: the quality loss that aggregate metrics hide. Shadow calls run after the client
has its answer, never delay it, and are bounded in number.

Answers are compared after normalisation (case and white space); this is exact for short answers
(labels, choices, numbers) and a lower bound on agreement for free text.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from ..answers import answers_agree
from .decision_log import DecisionLog
from .metrics import ProxyMetrics
from .runtime import RevisionRuntime
from .upstream import TierFailure, message_text


class ShadowScorer:
    def __init__(self, metrics: ProxyMetrics, decision_log: DecisionLog, seed: int | None = None) -> None:
        self.metrics = metrics
        self.decision_log = decision_log
        self.rng = random.Random(seed)
        self.tasks: set[asyncio.Task[None]] = set()

    def maybe_sample(
        self,
        rev: RevisionRuntime,
        answered: int,
        rate: float,
        max_in_flight: int,
        request: dict[str, Any],
        answer: str,
        response_id: str,
    ) -> bool:
        """Start a shadow call for this accepted answer with probability ``rate``."""
        if rate <= 0.0 or rev.capable_only or answered >= len(rev.clients) - 1:
            return False
        if self.rng.random() >= rate:
            return False
        if len(self.tasks) >= max_in_flight:
            self.metrics.shadow_skipped.labels(self.metrics.policy, "busy").inc()
            return False
        task = asyncio.create_task(self._run(rev, answered, request, answer, response_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(
        self, rev: RevisionRuntime, answered: int, request: dict[str, Any], answer: str, response_id: str
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
        agree = answers_agree(answer, message_text(comp.body))
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

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
