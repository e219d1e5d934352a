"""The recorder and each standard observer alone, on hand-made decisions (no HTTP, no processes)."""

import json
import math

import pytest
from prometheus_client import Gauge

from tierguard import metric_names as mn
from tierguard.cascade import Judgement
from tierguard.drift import CONFIDENCE_BINS
from tierguard.policy import ProxyConfig
from tierguard.proxy.decision_log import DecisionLog
from tierguard.proxy.drift_monitor import DriftMonitor, DriftSettings
from tierguard.proxy.metrics import ProxyMetrics
from tierguard.proxy.observers import (
    DecisionLogObserver,
    DriftObserver,
    MetricsObserver,
    ShadowObserver,
    counterfactual_cost,
    log_entry,
)
from tierguard.proxy.outcome import Attempt, Outcome
from tierguard.proxy.recorder import Decision, Recorder
from tierguard.proxy.runtime import Runtime
from tierguard.proxy.upstream import TierFailure

REFERENCE = [round(1.0 / CONFIDENCE_BINS, 6)] * CONFIDENCE_BINS


def config(mode="cascade", log_prompts=False, shadow_rate=0.0, reference=None):
    tiers = [
        {
            "name": name,
            "baseUrl": "http://127.0.0.1:9/v1",
            "model": name,
            "priceInputPerMillion": price,
            "priceOutputPerMillion": 2 * price,
            "confidence": {"threshold": 0.8, **({"reference": reference} if reference and i == 0 else {})},
        }
        for i, (name, price) in enumerate((("cheap", 1.0), ("big", 10.0)))
    ]
    return ProxyConfig.model_validate(
        {
            "policy": "p",
            "stable": {"name": "r1", "mode": mode, "cascade": {"tiers": tiers}},
            "settings": {"logPrompts": log_prompts, "shadowRate": shadow_rate, "decisionLog": "off"},
        }
    )


def runtime(**kw):
    return Runtime(config(**kw), session=None)  # no tier is called: the clients are never used


def escalated(rt, latency=0.5):
    """cheap (low confidence, 10 in / 2 out) then big (accepted as the last tier, 10 in / 4 out)."""
    rev = rt.stable
    cheap = Attempt("cheap", Judgement(0, False, "low_confidence", 0.3, 0.3))
    cheap.used(rev.clients[0].tier, 10, 2, 0.1)
    big = Attempt("big", Judgement(1, True, "last_tier", 0.9, 0.9))
    big.used(rev.clients[1].tier, 10, 4, 0.3)
    outcome = Outcome(rev, [cheap, big], answered=1, response_id="id-1", answer="B")
    return Decision.of("p", rt, {"messages": [{"role": "user", "content": "q"}]}, outcome, latency)


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


# --- the decision --------------------------------------------------------------------------


def test_decision_summarises_the_outcome():
    rt = runtime()
    d = escalated(rt)
    assert (d.answered, d.answered_tier, d.status, d.reason, d.response_id) == (
        1,
        "big",
        "ok",
        "last_tier",
        "id-1",
    )
    assert d.cost_usd == pytest.approx((10 * 1 + 2 * 2 + 10 * 10 + 4 * 20) / 1e6)


@pytest.mark.parametrize(
    ("kind", "answered", "status", "tier"),
    [
        ("client_error", None, "client_error", "none"),
        ("timeout", None, "error", "none"),
        ("timeout", 1, "error", "big"),
    ],
)
def test_decision_status_of_a_failure(kind, answered, status, tier):
    rt = runtime()
    outcome = Outcome(rt.stable, [Attempt("cheap")], answered=answered, failure=TierFailure(kind, "x", 504))
    d = Decision.of("p", rt, {}, outcome, 0.1)
    assert (d.status, d.answered_tier) == (status, tier)


# --- the recorder --------------------------------------------------------------------------


class Seen:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def observe(self, decision):
        self.log.append((self.name, decision.response_id))


class Broken:
    def observe(self, decision):
        raise RuntimeError("boom")


def test_recorder_hands_one_decision_to_every_observer_in_order(caplog):
    seen = []
    recorder = Recorder([Seen(seen, "a"), Broken()])
    recorder.add(Seen(seen, "b"))
    recorder.record(escalated(runtime()))
    assert seen == [("a", "id-1"), ("b", "id-1")]  # the broken observer does not stop the next one
    assert "Broken failed" in caplog.text


# --- the observers, each alone -------------------------------------------------------------


def test_metrics_observer():
    m = ProxyMetrics("p")
    rt = runtime()
    MetricsObserver(m).observe(escalated(rt))
    r = m.registry
    base = {"policy": "p", "revision": "r1"}
    assert sample(r, mn.TIER_REQUESTS + "_total", **base, tier="cheap", outcome="escalated") == 1
    assert sample(r, mn.TIER_REQUESTS + "_total", **base, tier="big", outcome="accepted") == 1
    assert sample(r, mn.ESCALATIONS + "_total", **base, tier="cheap", reason="low_confidence") == 1
    assert sample(r, mn.REQUESTS + "_total", **base, tier="big", status="ok") == 1
    assert sample(r, mn.TOKENS + "_total", **base, tier="big", direction="out") == 4
    assert sample(r, mn.CONFIDENCE + "_count", **base, tier="cheap") == 1
    assert sample(r, mn.TIER_LATENCY + "_sum", **base, tier="cheap") == pytest.approx(0.1)
    assert sample(r, mn.REQUEST_LATENCY + "_sum", **base) == pytest.approx(0.5)
    # had the big tier answered alone: the first call's 10 tokens in, the last call's 4 out
    assert sample(r, mn.COUNTERFACTUAL_COST_USD + "_total", **base) == pytest.approx((10 * 10 + 4 * 20) / 1e6)


def test_metrics_observer_labels_a_client_error_as_the_clients():
    m = ProxyMetrics("p")
    rt = runtime()
    a = Attempt("cheap", Judgement(0, False, "tier_error", None, None))
    err = TierFailure("client_error", "refused", 400)
    a.failed(err)
    MetricsObserver(m).observe(Decision.of("p", rt, {}, Outcome(rt.stable, [a], failure=err), 0.01))
    base = {"policy": "p", "revision": "r1"}
    assert sample(m.registry, mn.TIER_REQUESTS + "_total", **base, tier="cheap", outcome="client_error") == 1
    assert sample(m.registry, mn.ESCALATIONS + "_total", **base, tier="cheap", reason="tier_error") is None
    assert sample(m.registry, mn.REQUESTS + "_total", **base, tier="none", status="client_error") == 1


def test_counterfactual_cost():
    d = escalated(runtime())
    assert counterfactual_cost(d) == pytest.approx(d.revision.clients[-1].tier.cost_usd(10, 4))


def test_counterfactual_after_an_early_abort_counts_the_prompts_real_tokens():
    """An aborted stream ends before its usage arrives (0 tokens in): the counterfactual takes the
    prompt's tokens from the capable tier's own call, not 0."""
    rt = runtime()
    rev = rt.stable
    cheap = Attempt("cheap", Judgement(0, False, "early_abort", 0.2, 0.2))
    cheap.used(rev.clients[0].tier, 0, 3, 0.05)
    cheap.streamed_tokens = 3
    big = Attempt("big", Judgement(1, True, "last_tier", None, None))
    big.used(rev.clients[1].tier, 12, 4, 0.3)
    d = Decision.of("p", rt, {}, Outcome(rev, [cheap, big], answered=1, answer="B"), 0.4)
    assert counterfactual_cost(d) == (12 * 10.0 + 4 * 20.0) / 1e6  # big: $10 in, $20 out per million
    # answered by the cheap tier (never called the capable one): the first reported prompt count
    first = Attempt("cheap", Judgement(0, True, "accepted", 0.9, 0.9))
    first.used(rev.clients[0].tier, 9, 2, 0.1)
    d = Decision.of("p", rt, {}, Outcome(rev, [first], answered=0, answer="B"), 0.1)
    assert counterfactual_cost(d) == (9 * 10.0 + 2 * 20.0) / 1e6


def test_self_verification_tokens_are_costed_in_metrics_log_and_savings():
    rt = runtime()
    rev = rt.stable
    cheap = Attempt("cheap", Judgement(0, True, "accepted", 0.95, 0.95))
    cheap.used(rev.clients[0].tier, 10, 2, 0.1)
    cheap.verified(rev.clients[0].tier, 25, 1)  # the "is your answer correct?" call
    d = Decision.of("p", rt, {}, Outcome(rev, [cheap], answered=0, answer="B"), 0.2)
    cost = ((10 + 25) * 1.0 + (2 + 1) * 2.0) / 1e6  # cheap: $1 in, $2 out per million
    assert cheap.cost_usd == cost and d.cost_usd == cost
    m = ProxyMetrics("p")
    MetricsObserver(m).observe(d)
    base = {"policy": "p", "revision": "r1", "tier": "cheap"}
    assert sample(m.registry, mn.TOKENS + "_total", **base, direction="in") == 35
    assert sample(m.registry, mn.TOKENS + "_total", **base, direction="out") == 3
    assert sample(m.registry, mn.COST_USD + "_total", **base) == cost
    tier_log = log_entry(d)["tiers"][0]
    assert (tier_log["tokens_in"], tier_log["tokens_out"]) == (10, 2)
    assert (tier_log["self_eval_tokens_in"], tier_log["self_eval_tokens_out"]) == (25, 1)
    assert tier_log["cost_usd"] == cost and log_entry(d)["cost_usd"] == cost
    # the capable tier alone would not have verified: the counterfactual is its answer only
    assert counterfactual_cost(d) == (10 * 10.0 + 2 * 20.0) / 1e6


def test_drift_observer_feeds_each_judged_confidence():
    gauge = Gauge("psi", "psi", ["policy", "revision", "tier"], registry=None)
    monitor = DriftMonitor(gauge, DriftSettings(window=2, step=1))
    observer = DriftObserver(monitor)
    rt = runtime(reference=REFERENCE)
    observer.observe(escalated(rt))
    assert monitor.value("r1", 0) is None  # one answer of a window of two
    observer.observe(escalated(rt))
    psi = monitor.value("r1", 0)
    assert psi is not None and math.isfinite(psi)
    assert monitor.value("r1", 1) is None  # the big tier has no reference


def test_decision_log_observer_writes_one_line(tmp_path):
    path = tmp_path / "decisions.jsonl"
    observer = DecisionLogObserver(DecisionLog(str(path)))
    observer.observe(escalated(runtime()))
    observer.log.close()
    (line,) = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "request" and entry["id"] == "id-1"
    assert (entry["answered_by"], entry["reason"], entry["status"], entry["stream"]) == (
        "big",
        "last_tier",
        "ok",
        False,
    )
    assert [t["tier"] for t in entry["tiers"]] == ["cheap", "big"]
    assert entry["latency_ms"] == 500.0
    assert "messages" not in entry


def test_log_entry_carries_the_prompt_only_when_enabled():
    assert log_entry(escalated(runtime(log_prompts=True)))["messages"] == [{"role": "user", "content": "q"}]


class Scorer:
    def __init__(self):
        self.calls = []

    def maybe_sample(self, *args):
        self.calls.append(args)
        return True


def test_shadow_observer_offers_answers_the_client_received():
    scorer = Scorer()
    rt = runtime(shadow_rate=0.25)
    d = escalated(rt)
    ShadowObserver(scorer).observe(d)
    assert scorer.calls == [(rt.stable, 1, 0.25, 16, d.request, "B", "id-1", d.attempts)]


@pytest.mark.parametrize("change", ["no_answer", "failed", "not_answered"])
def test_shadow_observer_skips_what_the_client_did_not_get(change):
    rt = runtime(shadow_rate=1.0)
    outcome = Outcome(rt.stable, [Attempt("cheap")], answered=0, answer="B")
    if change == "no_answer":
        outcome.answer = None
    elif change == "failed":
        outcome.failure = TierFailure("timeout", "late", 504)
    else:
        outcome.answered = None
    scorer = Scorer()
    ShadowObserver(scorer).observe(Decision.of("p", rt, {}, outcome, 0.1))
    assert scorer.calls == []
