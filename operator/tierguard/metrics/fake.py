"""An in-memory :class:`~tierguard.metrics.provider.MetricsProvider` for tests without Prometheus.

Answers come from a mapping of exact query strings (or a callable); everything it was asked is
recorded in :attr:`FakeProvider.queries`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .provider import ProviderError, QueryError, normalize

Answer = float | None | Exception


class FakeProvider:
    """``FakeProvider({"up": 1.0, "bad": QueryError("parse error")}, default=None)``.

    Values may be floats, None (no data) or exceptions (raised). A query not in ``answers`` gets
    ``default`` (no data unless set), or ``fn(query)`` when a callable is given. ``down=True``
    makes every query fail like an unreachable server.
    """

    def __init__(
        self,
        answers: Mapping[str, Answer] | None = None,
        *,
        default: Answer = None,
        fn: Callable[[str], Answer] | None = None,
        down: bool = False,
    ) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.default = default
        self.fn = fn
        self.down = down
        self.queries: list[str] = []

    def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        if self.down:
            raise ProviderError("connection refused (fake provider is down)")
        if promql in self.answers:
            answer = self.answers[promql]
        elif self.fn is not None:
            answer = self.fn(promql)
        else:
            answer = self.default
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return None
        if not isinstance(answer, (int, float)):
            raise QueryError(f"fake answer for {promql!r} is not a number: {answer!r}")
        return normalize(float(answer)) if not math.isinf(answer) else float(answer)
