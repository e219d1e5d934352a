"""The Prometheus adapter and the rollout analysis against a real Prometheus server.

Prometheus (Debian's package) scrapes an in-process HTTP endpoint that serves the proxy's own
metric registry (:class:`tierguard.proxy.metrics.ProxyMetrics`, so the metric names are the real
contract) with counters a background thread moves at known ratios. The scrape adds the
``namespace`` label, as a ServiceMonitor does in a cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from infra.faultproxy import FaultProxy, Rule
from needs import prometheus
from tierguard.localenv.ports import free_port
from tierguard.localenv.prometheus import PrometheusServer
from tierguard.metrics.prometheus import PrometheusProvider
from tierguard.metrics.provider import MetricsProvider, ProviderError, QueryError
from tierguard.policy import CascadePolicySpec, CascadeSpec, QualitySLOSpec, Revision, Tier
from tierguard.proxy.metrics import ProxyMetrics
from tierguard.rollout.analysis import observe
from tierguard.rollout.decide import Hold, Rollback, decide
from tierguard.rollout.observations import Verdict
from tierguard.rollout.status import PolicyStatus

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.prometheus]

POLICY = "checkout"
NAMESPACE = "shop"
WINDOW = "10s"


@pytest.fixture(autouse=True, scope="module")
def _prometheus_binary() -> None:
    prometheus()  # skips locally, fails in CI when the binary is missing


CASCADE_CANARY = CascadeSpec(
    tiers=[
        Tier(name="small", base_url="http://small:8000/v1", model="small"),
        Tier(name="large", base_url="http://large:8000/v1", model="large"),
    ]
)
CANARY = Revision.of(CASCADE_CANARY)
STABLE = Revision(name="stable1", mode="cascade", cascade=CASCADE_CANARY)


@dataclass
class Traffic:
    """Per tick: requests to the small tier of each revision and how they end."""

    canary_errors: int = 3  # of 10 small-tier calls: 30% errors
    canary_escalations: int = 4  # 40% escalated
    stable_errors: int = 1  # 10% errors on the stable revision


class FakeProxyMetrics:
    """The proxy's registry, moved by a thread as a proxy under steady traffic would."""

    def __init__(self, traffic: Traffic) -> None:
        self.m = ProxyMetrics(POLICY)
        self.traffic = traffic
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _tick(self) -> None:
        m, t = self.m, self.traffic
        for rev, errors, escalated in (
            (CANARY.name, t.canary_errors, t.canary_escalations),
            (STABLE.name, t.stable_errors, 2),
        ):
            accepted = 10 - errors - escalated
            m.tier_requests.labels(POLICY, rev, "small", "error").inc(errors)
            m.tier_requests.labels(POLICY, rev, "small", "escalated").inc(escalated)
            m.tier_requests.labels(POLICY, rev, "small", "accepted").inc(accepted)
            m.escalations.labels(POLICY, rev, "small", "low_confidence").inc(escalated)
            m.tier_requests.labels(POLICY, rev, "large", "accepted").inc(escalated + errors)
            for _ in range(10):
                m.tier_latency.labels(POLICY, rev, "small").observe(0.2)
            m.tier_latency.labels(POLICY, rev, "large").observe(2.0)
            m.requests.labels(POLICY, rev, "small", "ok").inc(accepted)
            m.requests.labels(POLICY, rev, "large", "ok").inc(escalated + errors)
            m.cost.labels(POLICY, rev, "small").inc(0.001)
            m.cost.labels(POLICY, rev, "large").inc(0.009)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self._tick()


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[PrometheusServer, FakeProxyMetrics, str]]:
    from prometheus_client import start_http_server

    proxy = FakeProxyMetrics(Traffic())
    proxy.m.set_config("hash-current", STABLE.name, CANARY.name, 10)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=proxy.m.registry)
    target = f"127.0.0.1:{server.server_port}"
    proxy.thread.start()
    prom = PrometheusServer(targets=[(target, {"namespace": NAMESPACE})], scrape_interval="1s").start()
    try:
        # enough history for a 10s rate window
        prom.wait_for_value(
            f'min(count_over_time({{__name__="tierguard_tier_requests_total",namespace="{NAMESPACE}"}}[{WINDOW}]))',
            lambda v: v >= 8,
            timeout=60,
        )
        yield prom, proxy, target
    finally:
        proxy.stop.set()
        prom.stop()
        server.shutdown()


# --- the adapter on its own --------------------------------------------------------------------


def test_adapter_values_no_data_and_nan(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    prom, _, _ = world
    p = PrometheusProvider(prom.url)
    assert isinstance(p, MetricsProvider)
    assert p.query("vector(3)") == 3.0
    assert p.query("scalar(vector(2.5))") == 2.5  # a scalar result
    assert p.query('up{job="no-such-job"}') is None  # empty vector
    assert p.query("vector(0) / vector(0)") is None  # NaN is no data
    assert p.query("vector(1) / vector(0)") == float("inf")
    assert p.query(f'sum(up{{namespace="{NAMESPACE}"}})') == 1.0


def test_adapter_errors(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    prom, _, _ = world
    p = PrometheusProvider(prom.url)
    with pytest.raises(QueryError, match="parse error"):
        p.query("sum(rate(")
    with pytest.raises(QueryError, match="2 series"):
        p.query('vector(1) or label_replace(vector(2), "x", "y", "", "")')
    down = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ProviderError, match="unreachable") as info:
        down.query("vector(1)")
    assert not isinstance(info.value, QueryError)


def test_adapter_bounds_a_slow_query(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    """A Prometheus slower than the timeout (a delaying proxy in front of the real one) is a
    ProviderError after the timeout, not a stuck caller; the same client works once it is fast."""
    prom, _, _ = world
    slow = FaultProxy(prom.url).start()
    try:
        rule = slow.add(Rule("GET", "/api/v1/query", delay=5.0, times=None))
        p = PrometheusProvider(slow.url, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(ProviderError, match=r"did not answer within 0\.5s") as info:
            p.query("vector(1)")
        assert time.monotonic() - t0 < 3.0
        assert not isinstance(info.value, QueryError) and rule.hits == 1
        slow.remove(rule)
        assert p.query("vector(1)") == 1.0
    finally:
        slow.stop()


# --- the analysis ------------------------------------------------------------------------------

SLOS = {
    "quality": QualitySLOSpec.model_validate(
        {
            "objectives": [
                {"name": "errors", "tier": "small", "signal": "error_rate", "max": 0.2},
                {"name": "escalations", "signal": "escalation_rate", "max": 0.5},
                {"name": "latency", "signal": "latency_p95", "max": 3.0},
                {"name": "cost", "signal": "cost_per_request", "max": 0.01},
                {
                    "name": "errors-vs-stable",
                    "tier": "small",
                    "signal": "error_rate",
                    "maxIncreaseOverStable": 0.1,
                },
                {"name": "thumbs", "tier": "small", "signal": "thumbs_down_rate", "max": 0.3},
                {
                    "name": "custom-accepted",
                    "query": 'sum(rate(tierguard_tier_requests_total{policy="{{policy}}",namespace="{{namespace}}",'
                    'revision="{{revision}}",tier="{{tier}}",outcome="accepted"}[{{interval}}]))',
                    "tier": "small",
                    "min": 0.0,
                },
            ]
        }
    )
}


def _spec(min_samples: int = 20) -> CascadePolicySpec:
    return CascadePolicySpec.model_validate(
        {
            **CASCADE_CANARY.model_dump(by_alias=True),
            "rollout": {"interval": WINDOW, "minSamples": min_samples, "failureThreshold": 2},
            "slos": [{"name": "quality"}],
        }
    )


def _status(config_hash: str = "hash-current") -> PolicyStatus:
    return PolicyStatus(
        phase="Progressing",
        stable=STABLE,
        stable_revision=STABLE.name,
        canary=CANARY,
        canary_revision=CANARY.name,
        canary_weight=10,
        step_started_at=datetime(2020, 1, 1, tzinfo=UTC),
        config_hash=config_hash,
    )


class Counting:
    def __init__(self, inner: MetricsProvider) -> None:
        self.inner = inner
        self.queries: list[str] = []

    def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        return self.inner.query(promql)


def test_observe_against_real_prometheus(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    prom, _, _ = world
    provider = Counting(PrometheusProvider(prom.url))
    obs = observe(POLICY, NAMESPACE, _spec(), _status(), SLOS, provider)
    assert obs.provider_error is None
    assert obs.config_current, obs.config_message
    by = {(c.objective, c.tier): c for c in obs.checks}
    # error rate 30% > 20%
    errors = by[("errors", "small")]
    assert errors.verdict is Verdict.BREACH and errors.bound == 0.2
    assert errors.value == pytest.approx(0.3, abs=0.05)
    # escalation rate 40% <= 50%; checked for the small tier only (the last tier always answers)
    esc = by[("escalations", "small")]
    assert esc.verdict is Verdict.PASS and esc.value == pytest.approx(0.4, abs=0.05)
    assert ("escalations", "large") not in by
    # p95 of 0.2s observations: inside the (0.1, 0.25] bucket; the large tier's 2s in (1, 2.5]
    lat = by[("latency", "small")]
    assert lat.verdict is Verdict.PASS and lat.value is not None and 0.1 < lat.value <= 0.25
    lat = by[("latency", "large")]
    assert lat.verdict is Verdict.PASS and lat.value is not None and 1.0 < lat.value <= 2.5
    # cost: 0.01 USD per 10 requests, revision-wide
    cost = by[("cost", None)]
    assert cost.verdict is Verdict.PASS and cost.value == pytest.approx(0.001, rel=0.1)
    # relative: canary 30% vs stable 10% + 10 points
    rel = by[("errors-vs-stable", "small")]
    assert rel.verdict is Verdict.BREACH
    assert rel.stable_value == pytest.approx(0.1, abs=0.05) and rel.bound == pytest.approx(0.2, abs=0.05)
    # no feedback at all: no data, not a pass and not a breach
    assert by[("thumbs", "small")].verdict is Verdict.NO_DATA
    # a custom template rendered with every placeholder
    custom = by[("custom-accepted", "small")]
    assert custom.verdict is Verdict.PASS and custom.value is not None and custom.value > 0
    # samples per tier in the window: 10 small-tier calls per 50ms tick, 7 reach the large tier
    assert obs.samples["small"] > obs.samples["large"] > 20
    # API calls per analysis interval (reported in the docs)
    # API calls per analysis interval: config hash, one per check, the stable revision for the
    # relative bound, one sample count per checked tier
    assert len(obs.checks) == 8
    assert len(provider.queries) == 1 + 8 + 1 + 2


def test_observe_then_decide_breach_rolls_back(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    prom, _, _ = world
    provider = PrometheusProvider(prom.url)
    st = _status().model_copy(update={"failed_checks": 1})
    obs = observe(POLICY, NAMESPACE, _spec(), st, SLOS, provider)
    now = datetime.now(UTC)
    d = decide(_spec().rollout, st, obs, now)
    assert isinstance(d, Rollback)
    assert {(b.slo, b.objective) for b in d.breaches} >= {
        ("quality", "errors"),
        ("quality", "errors-vs-stable"),
    }


def test_observe_stale_config_and_missing_namespace(
    world: tuple[PrometheusServer, FakeProxyMetrics, str],
) -> None:
    prom, _, _ = world
    provider = PrometheusProvider(prom.url)
    stale = observe(POLICY, NAMESPACE, _spec(), _status("hash-old"), SLOS, provider)
    assert not stale.config_current and "0%" in stale.config_message
    d = decide(_spec().rollout, _status("hash-old"), stale, datetime.now(UTC))
    assert isinstance(d, Hold) and d.reason == "StaleConfig"
    other_ns = observe(POLICY, "elsewhere", _spec(), _status(), SLOS, provider)
    assert not other_ns.config_current and "no proxy" in other_ns.config_message
    assert all(c.verdict is Verdict.NO_DATA for c in other_ns.checks if c.objective != "custom-accepted")


def test_observe_too_few_samples(world: tuple[PrometheusServer, FakeProxyMetrics, str]) -> None:
    prom, _, _ = world
    obs = observe(POLICY, NAMESPACE, _spec(min_samples=10**9), _status(), SLOS, PrometheusProvider(prom.url))
    d = decide(_spec(min_samples=10**9).rollout, _status(), obs, datetime.now(UTC))
    assert isinstance(d, Hold) and d.reason == "TooFewSamples"


def test_observe_prometheus_down() -> None:
    down = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=2)
    obs = observe(POLICY, NAMESPACE, _spec(), _status(), SLOS, down)
    assert obs.provider_error is not None and "unreachable" in obs.provider_error
    d = decide(_spec().rollout, _status().model_copy(update={"failed_checks": 1}), obs, datetime.now(UTC))
    assert isinstance(d, Hold) and d.reason == "ProviderError"


def test_every_rendered_query_parses_in_prometheus(
    world: tuple[PrometheusServer, FakeProxyMetrics, str],
) -> None:
    """Each built-in signal, the sample count and the config query are valid PromQL (a QueryError
    would be raised otherwise); with no series at all they read as no data, never as an error."""
    from typing import get_args

    from tierguard.policy import Signal
    from tierguard.rollout.slo import QueryContext, config_current_query, samples_query, signal_query

    prom, _, _ = world
    p = PrometheusProvider(prom.url)
    nowhere = QueryContext("no-such-policy", NAMESPACE, "r", WINDOW, "small")
    for signal in get_args(Signal):
        assert p.query(signal_query(signal, nowhere)) is None, signal
        assert p.query(signal_query(signal, nowhere.for_tier(None))) is None, signal
    assert p.query(samples_query(nowhere)) is None
    assert p.query(config_current_query("no-such-policy", NAMESPACE, "h")) is None
