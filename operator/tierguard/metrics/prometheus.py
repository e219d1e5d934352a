"""The Prometheus adapter of :class:`~tierguard.metrics.provider.MetricsProvider`.

Uses ``prometheus_api_client.PrometheusConnect`` (synchronous: the operator calls it from a worker
thread). Instant queries only; one query gives one number:

* an empty vector, or NaN → ``None`` (no data)
* one sample (vector or scalar) → its value
* several series → :class:`QueryError` (aggregate the query, e.g. ``sum(...)``)
* HTTP 400/422 (bad PromQL) → :class:`QueryError`; unreachable, slower than ``timeout``, 5xx →
  :class:`ProviderError`
"""

from __future__ import annotations

import json
import math
from typing import Any

import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from .provider import ProviderError, QueryError, normalize


def _message(err: PrometheusApiClientException) -> str:
    text = str(err)
    # the client formats the body as a bytes repr: pull out Prometheus' own error text
    start = text.find("{")
    if start >= 0:
        body = text[start:].rstrip(")'\"")
        try:
            data = json.loads(body.encode().decode("unicode_escape"))
            if isinstance(data, dict) and data.get("error"):
                return f"{data.get('errorType', 'error')}: {data['error']}"
        except ValueError:
            pass
    return text


class PrometheusProvider:
    """``PrometheusProvider("http://prometheus:9090").query("sum(up)")``.

    ``timeout`` (seconds) bounds each HTTP request and is passed to Prometheus as the query
    timeout; failed requests are not retried (the next analysis interval is the retry).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        disable_ssl: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Prometheus durations take whole numbers of a unit: "0.5s" is rejected, "500ms" is not
        self._promql_timeout = f"{max(1, round(timeout * 1000))}ms"
        try:
            self.client = PrometheusConnect(
                url=self.url,
                headers=headers,
                disable_ssl=disable_ssl,
                retry=Retry(total=0, connect=0, read=0, status=0, raise_on_status=False),
                timeout=timeout,
            )
        except (TypeError, ValueError) as err:
            raise ProviderError(f"bad Prometheus URL {url!r}: {err}") from None

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.url!r})"

    def query(self, promql: str) -> float | None:
        try:
            result: Any = self.client.custom_query(promql, params={"timeout": self._promql_timeout})
        except PrometheusApiClientException as err:
            text = _message(err)
            if "HTTP Status Code 400" in str(err) or "HTTP Status Code 422" in str(err) or "bad_data" in text:
                raise QueryError(f"Prometheus rejected the query {promql!r}: {text}") from None
            raise ProviderError(f"Prometheus at {self.url} answered with an error: {text}") from None
        except requests.exceptions.RequestException as err:
            if _timed_out(err):
                raise ProviderError(
                    f"Prometheus at {self.url} did not answer within {self.timeout:g}s (the query timeout)"
                ) from None
            raise ProviderError(
                f"Prometheus at {self.url} is unreachable: {type(err).__name__}: {err}"
            ) from None
        except ValueError as err:  # a body that is not JSON
            raise ProviderError(f"Prometheus at {self.url} sent a malformed response: {err}") from None
        return _single_value(promql, result)


def _timed_out(err: requests.exceptions.RequestException) -> bool:
    """A timeout, also when urllib3 wrapped it (no retries: ``MaxRetryError(reason=ReadTimeoutError)``)."""
    if isinstance(err, requests.exceptions.Timeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    # urllib3 2 derives NewConnectionError (refused, no route) from ConnectTimeoutError
    return isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, urllib3.exceptions.NewConnectionError
    )


def _single_value(promql: str, result: Any) -> float | None:
    if not isinstance(result, list):
        raise ProviderError(f"unexpected Prometheus result for {promql!r}: {result!r}")
    if not result:
        return None
    # a scalar/string result is [timestamp, "value"]
    if len(result) == 2 and not isinstance(result[0], dict):
        return _to_float(promql, result[1])
    if len(result) > 1:
        raise QueryError(
            f"query {promql!r} returned {len(result)} series; aggregate it to one (e.g. sum(...))"
        )
    sample = result[0]
    if not isinstance(sample, dict) or "value" not in sample:
        raise QueryError(f"query {promql!r} returned a range or unknown result; use an instant vector")
    return _to_float(promql, sample["value"][1])


def _to_float(promql: str, raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise QueryError(f"query {promql!r} returned a non-number {raw!r}") from None
    return normalize(value) if not math.isinf(value) else value
