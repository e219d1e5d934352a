"""Metrics providers: the narrow port the rollout analysis queries (:mod:`.provider`), the
Prometheus adapter (:mod:`.prometheus`) and an in-memory fake for pure tests (:mod:`.fake`)."""

from .provider import MetricsProvider, NoData, ProviderError, QueryError

__all__ = ["MetricsProvider", "NoData", "ProviderError", "QueryError"]
