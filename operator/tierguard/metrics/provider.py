"""The metrics-provider port: run one PromQL query, get one number.

Outcomes are kept apart, as the rollout treats them differently:

* a float: the query's single value (``+Inf``/``-Inf`` are values);
* ``None``: no data (an empty vector, or NaN, e.g. a rate ratio over zero requests);
* :class:`ProviderError`: the provider is unreachable or answered badly;
* :class:`QueryError` (a :class:`ProviderError`): the query itself is wrong (a syntax error, or
  more than one series where one number is expected).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable


class ProviderError(Exception):
    """The provider could not answer (unreachable, timeout, bad response)."""


class QueryError(ProviderError):
    """The provider answered, but the query is unusable (bad PromQL, several series, a string)."""


class NoData(Exception):
    """Raised by :func:`require` when a query has no data."""


@runtime_checkable
class MetricsProvider(Protocol):
    def query(self, promql: str) -> float | None:
        """The single value of an instant query; None for no data; raises :class:`ProviderError`."""
        ...


def normalize(value: float) -> float | None:
    """NaN is no data."""
    return None if math.isnan(value) else value


def require(provider: MetricsProvider, promql: str) -> float:
    """Like ``provider.query`` but raises :class:`NoData` instead of returning None."""
    value = provider.query(promql)
    if value is None:
        raise NoData(promql)
    return value
