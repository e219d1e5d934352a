"""PromQL rendering of SLO objectives, and the analysis on an in-memory provider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from tierguard import metric_names as m
from tierguard.metrics.fake import FakeProvider
from tierguard.metrics.provider import ProviderError, QueryError
from tierguard.policy import CascadePolicySpec, Objective, QualitySLOSpec, Revision, Signal, SLORef
from tierguard.rollout.analysis import observe
from tierguard.rollout.decide import Hold, decide
from tierguard.rollout.observations import Verdict
from tierguard.rollout.slo import (
    QueryContext,
    TemplateError,
    config_current_query,
    objective_query,
    objective_tiers,
    render_template,
    samples_query,
    signal_query,
    template_placeholders,
    validate_slos,
)
from tierguard.rollout.status import Analysis, CheckResult, PolicyStatus

CTX = QueryContext(policy="checkout", namespace="shop", revision="abc123", interval="2m", tier="small")
SEL = 'policy="checkout",namespace="shop",revision="abc123",tier="small"'


def obj(**kw: object) -> Objective:
    return Objective.model_validate({"name": "o", **kw})


# --- built-in signals --------------------------------------------------------------------------


def test_escalation_rate() -> None:
    assert signal_query("escalation_rate", CTX) == (
        f"(sum(rate(tierguard_escalations_total{{{SEL}}}[2m])) or vector(0)) / "
        f"sum(rate(tierguard_tier_requests_total{{{SEL}}}[2m]))"
    )


def test_error_rate_counts_error_outcomes() -> None:
    q = signal_query("error_rate", CTX)
    assert q == (
        f'(sum(rate(tierguard_tier_requests_total{{{SEL},outcome="error"}}[2m])) or vector(0)) / '
        f"sum(rate(tierguard_tier_requests_total{{{SEL}}}[2m]))"
    )


@pytest.mark.parametrize(
    ("signal", "q"), [("latency_p50", "0.5"), ("latency_p95", "0.95"), ("latency_p99", "0.99")]
)
def test_latency_quantiles(signal: Signal, q: str) -> None:
    assert signal_query(signal, CTX) == (
        f"histogram_quantile({q}, sum by (le) (rate(tierguard_tier_latency_seconds_bucket{{{SEL}}}[2m])))"
    )


def test_thumbs_down_shadow_drift_cost() -> None:
    assert signal_query("thumbs_down_rate", CTX) == (
        f'(sum(rate(tierguard_feedback_total{{{SEL},rating="down"}}[2m])) or vector(0)) / '
        f"sum(rate(tierguard_feedback_total{{{SEL}}}[2m]))"
    )
    assert signal_query("shadow_disagreement", CTX) == (
        f"(sum(rate(tierguard_shadow_disagreements_total{{{SEL}}}[2m])) or vector(0)) / "
        f"sum(rate(tierguard_shadow_samples_total{{{SEL}}}[2m]))"
    )
    assert (
        signal_query("confidence_drift", CTX) == f"max(max_over_time(tierguard_confidence_psi{{{SEL}}}[2m]))"
    )
    rev = 'policy="checkout",namespace="shop",revision="abc123"'
    assert signal_query("cost_per_request", CTX) == (
        f"(sum(rate(tierguard_cost_usd_total{{{SEL}}}[2m])) or vector(0)) / "
        f"sum(rate(tierguard_requests_total{{{rev}}}[2m]))"
    )
    assert signal_query("cost_per_request", CTX.for_tier(None)) == (
        f"(sum(rate(tierguard_cost_usd_total{{{rev}}}[2m])) or vector(0)) / "
        f"sum(rate(tierguard_requests_total{{{rev}}}[2m]))"
    )


def test_review_accuracy_and_outcome_rate() -> None:
    assert signal_query("review_accuracy", CTX) == f"min(min_over_time(tierguard_review_accuracy{{{SEL}}}[2m]))"
    assert signal_query("outcome_rate", CTX, "human_handoff") == (
        f'(sum(rate(tierguard_outcome_events_total{{{SEL},event="human_handoff"}}[2m])) or vector(0)) / '
        f'sum(rate(tierguard_requests_total{{{SEL},status="ok"}}[2m]))'
    )
    obj = Objective(name="handoffs", signal="outcome_rate", event="human_handoff", max=0.05)
    assert 'event="human_handoff"' in objective_query(obj, CTX)
    with pytest.raises(ValueError, match="needs an event"):
        Objective(name="handoffs", signal="outcome_rate", max=0.05)
    with pytest.raises(ValueError, match="only it takes one"):
        Objective(name="acc", signal="review_accuracy", event="refund", min=0.9)


@pytest.mark.parametrize("signal", get_args(Signal))
def test_every_signal_uses_contract_names_and_labels(signal: Signal) -> None:
    q = signal_query(signal, CTX)
    names = {
        m.ESCALATIONS + "_total",
        m.TIER_REQUESTS + "_total",
        m.TIER_LATENCY + "_bucket",
        m.FEEDBACK + "_total",
        m.SHADOW_DISAGREEMENTS + "_total",
        m.SHADOW_SAMPLES + "_total",
        m.CONFIDENCE_PSI,
        m.COST_USD + "_total",
        m.REQUESTS + "_total",
        m.REVIEW_ACCURACY,
        m.OUTCOME_EVENTS + "_total",
    }
    assert any(n + "{" in q for n in names)
    assert 'policy="checkout"' in q and 'namespace="shop"' in q and 'revision="abc123"' in q
    assert "[2m]" in q
    assert q.count("(") == q.count(")")


def test_no_namespace_leaves_the_label_out() -> None:
    q = signal_query("error_rate", QueryContext("p", None, "r", "30s", "t"))
    assert "namespace" not in q and 'policy="p",revision="r",tier="t"' in q


def test_label_values_are_escaped() -> None:
    q = signal_query("error_rate", QueryContext('we"ird\\', "ns", "r", "1m", "t"))
    assert 'policy="we\\"ird\\\\"' in q


def test_samples_and_config_queries() -> None:
    assert samples_query(CTX) == f"sum(increase(tierguard_tier_requests_total{{{SEL}}}[2m]))"
    assert config_current_query("checkout", "shop", "h1") == (
        '(count(tierguard_config_info{policy="checkout",namespace="shop",config_hash="h1"}) or vector(0)) / '
        'count(tierguard_config_info{policy="checkout",namespace="shop"})'
    )


# --- custom templates --------------------------------------------------------------------------


def test_template_renders_every_placeholder() -> None:
    t = 'sum(rate(x{policy="{{policy}}",namespace="{{ namespace }}",revision="{{revision}}",tier="{{tier}}"}[{{interval}}]))'
    assert render_template(t, CTX.values()) == f"sum(rate(x{{{SEL}}}[2m]))"
    assert objective_query(obj(query=t, max=1), CTX) == f"sum(rate(x{{{SEL}}}[2m]))"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ('sum(x{a="{{tenant}}"})', "unknown placeholder {{tenant}}"),
        ('sum(x{a="{{}}"})', "unknown placeholder {{}}"),
        ('sum(x{a="{{policy}"})', "unbalanced"),
        ('sum(x{a="policy}}"})', "unbalanced"),
    ],
)
def test_bad_templates(template: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error.replace("{", r"\{").replace("}", r"\}")):
        render_template(template, CTX.values())


def test_placeholder_without_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"no value for \{\{tier\}\}"):
        render_template('x{tier="{{tier}}"}', CTX.for_tier(None).values())
    with pytest.raises(TemplateError, match="namespace"):
        render_template('x{namespace="{{namespace}}"}', QueryContext("p", None, "r", "1m", "t").values())


def test_template_placeholders() -> None:
    assert template_placeholders("{{policy}} {{tier}} {{policy}}") == {"policy", "tier"}
    assert template_placeholders("sum(up)") == set()


# --- which tiers an objective covers -----------------------------------------------------------

TIERS = ["small", "medium", "large"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"signal": "error_rate", "max": 0.1}, ["small", "medium", "large"]),
        ({"signal": "error_rate", "max": 0.1, "tier": "medium"}, ["medium"]),
        ({"signal": "escalation_rate", "max": 0.5}, ["small", "medium"]),
        ({"signal": "escalation_rate", "max": 0.5, "tier": "large"}, ["large"]),
        ({"signal": "shadow_disagreement", "max": 0.2}, ["small", "medium"]),
        ({"signal": "cost_per_request", "max": 0.01}, [None]),
        ({"signal": "cost_per_request", "max": 0.01, "tier": "small"}, ["small"]),
        ({"query": "sum(up{policy='{{policy}}'})", "min": 1}, [None]),
        ({"query": "sum(up{tier='{{tier}}'})", "min": 1}, ["small", "medium", "large"]),
    ],
)
def test_objective_tiers(kw: dict[str, object], expected: list[str | None]) -> None:
    assert objective_tiers(obj(**kw), TIERS) == expected


def test_validate_slos() -> None:
    spec = CascadePolicySpec.model_validate(
        {"tiers": [{"name": t, "baseUrl": f"http://{t}/v1", "model": t} for t in ("small", "large")]}
    )
    slos = {
        "ok": QualitySLOSpec(objectives=[obj(signal="error_rate", max=0.1)]),
        "bad": QualitySLOSpec(
            objectives=[
                obj(query="sum(x{a='{{tenant}}'})", max=1),
                Objective(name="t", signal="error_rate", max=0.1, tier="huge"),
            ]
        ),
    }
    assert validate_slos([SLORef(name="ok")], slos, spec.cascade()) == []
    problems = validate_slos(
        [SLORef(name="ok"), SLORef(name="bad"), SLORef(name="gone")], slos, spec.cascade()
    )
    assert len(problems) == 3
    assert "{{tenant}}" in problems[0]
    assert "tier 'huge' is not a tier of the cascade (small, large)" in problems[1]
    assert "QualitySLO 'gone' not found" in problems[2]


# --- observe() on a fake provider --------------------------------------------------------------

CANARY_SPEC = CascadePolicySpec.model_validate(
    {
        "tiers": [{"name": t, "baseUrl": f"http://{t}/v1", "model": t} for t in ("small", "large")],
        "rollout": {"interval": "1m", "minSamples": 10},
        "slos": [{"name": "q"}],
    }
)
CANARY = Revision.of(CANARY_SPEC.cascade())
STABLE = Revision(name="stable1", cascade=CANARY_SPEC.cascade())
BASELINE = Revision.of(CANARY_SPEC.cascade(), mode="capable-only")


def status(stable: Revision = STABLE, last: Analysis | None = None) -> PolicyStatus:
    return PolicyStatus(
        phase="Progressing",
        stable=stable,
        stable_revision=stable.name,
        canary=CANARY,
        canary_revision=CANARY.name,
        canary_weight=10,
        config_hash="h1",
        step_started_at=datetime(2026, 1, 1, tzinfo=UTC),
        last_analysis=last,
    )


def ctx(revision: str, tier: str | None) -> QueryContext:
    return QueryContext("p", "ns", revision, "1m", tier)


def answers(**extra: float | Exception | None) -> dict[str, float | Exception | None]:
    base: dict[str, float | Exception | None] = {
        config_current_query("p", "ns", "h1"): 1.0,
        samples_query(ctx(CANARY.name, "small")): 120.0,
        samples_query(ctx(CANARY.name, "large")): 40.0,
    }
    base.update(extra)
    return base


def slos(*objectives: Objective) -> dict[str, QualitySLOSpec]:
    return {"q": QualitySLOSpec(objectives=list(objectives))}


ERR = obj(signal="error_rate", max=0.1, tier="small")
ERR_Q = signal_query("error_rate", ctx(CANARY.name, "small"))


def test_observe_pass_breach_nodata_error() -> None:
    for value, verdict in (
        (0.05, Verdict.PASS),
        (0.3, Verdict.BREACH),
        (None, Verdict.NO_DATA),
        (float("nan"), Verdict.NO_DATA),
    ):
        fake = FakeProvider(answers(**{ERR_Q: value}))
        o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR), fake)
        (c,) = o.checks
        assert c.verdict is verdict, value
        assert o.samples == {"small": 120}
        assert o.config_current and o.provider_error is None
    o = observe(
        "p",
        "ns",
        CANARY_SPEC,
        status(),
        slos(ERR),
        FakeProvider(answers(**{ERR_Q: QueryError("parse error")})),
    )
    assert o.checks[0].verdict is Verdict.ERROR and "parse error" in o.checks[0].message
    assert o.provider_error is None


def test_observe_min_bound_and_breach_details() -> None:
    lo = obj(signal="error_rate", min=0.2, tier="small")
    (c,) = observe("p", "ns", CANARY_SPEC, status(), slos(lo), FakeProvider(answers(**{ERR_Q: 0.1}))).checks
    assert (c.verdict, c.value, c.bound) == (Verdict.BREACH, 0.1, 0.2)
    assert "below the minimum" in c.message


def test_observe_unreachable_stops_at_first_query() -> None:
    fake = FakeProvider(down=True)
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR, ERR), fake)
    assert o.provider_error is not None and "connection refused" in o.provider_error
    assert o.checks == () and len(fake.queries) == 1


def test_observe_unreachable_midway() -> None:
    fake = FakeProvider(answers(**{ERR_Q: ProviderError("timeout")}))
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR), fake)
    assert o.provider_error == "timeout"


def test_observe_config_hash() -> None:
    q = config_current_query("p", "ns", "h1")
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR), FakeProvider(answers(**{q: 0.5, ERR_Q: 0.0})))
    assert not o.config_current and "50% of the proxies" in o.config_message
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR), FakeProvider(answers(**{q: None, ERR_Q: 0.0})))
    assert not o.config_current and "no proxy" in o.config_message
    no_hash = status().model_copy(update={"config_hash": None})
    o = observe("p", "ns", CANARY_SPEC, no_hash, slos(ERR), FakeProvider(answers(**{ERR_Q: 0.0})))
    assert not o.config_current and "no config hash" in o.config_message
    # an explicit hash wins over the status'
    q2 = config_current_query("p", "ns", "h2")
    o = observe(
        "p",
        "ns",
        CANARY_SPEC,
        no_hash,
        slos(ERR),
        FakeProvider(answers(**{q2: 1.0, ERR_Q: 0.0})),
        config_hash="h2",
    )
    assert o.config_current


def test_observe_a_failing_config_hash_query_is_a_provider_error_hold() -> None:
    """A QueryError from the config-hash query does not escape: the analysis holds (ProviderError)."""
    q = config_current_query("p", "ns", "h1")
    fake = FakeProvider(answers(**{q: QueryError("vector cannot contain metrics with the same labelset")}))
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR), fake)
    assert o.provider_error is not None
    assert "config hash query" in o.provider_error and "same labelset" in o.provider_error
    assert o.checks == () and fake.queries == [q]
    d = decide(CANARY_SPEC.rollout, status(), o, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=1))
    assert isinstance(d, Hold) and d.reason == "ProviderError" and not d.failed_check
    assert "same labelset" in d.message


REL = obj(signal="thumbs_down_rate", maxIncreaseOverStable=0.02, tier="small")


def rel_q(revision: str, tier: str | None) -> str:
    return signal_query("thumbs_down_rate", ctx(revision, tier))


def test_relative_bound_uses_stable_revision() -> None:
    fake = FakeProvider(answers(**{rel_q(CANARY.name, "small"): 0.05, rel_q(STABLE.name, "small"): 0.04}))
    (c,) = observe("p", "ns", CANARY_SPEC, status(), slos(REL), fake).checks
    assert c.verdict is Verdict.PASS and c.stable_value == 0.04 and c.bound == pytest.approx(0.06)
    fake = FakeProvider(answers(**{rel_q(CANARY.name, "small"): 0.08, rel_q(STABLE.name, "small"): 0.04}))
    (c,) = observe("p", "ns", CANARY_SPEC, status(), slos(REL), fake).checks
    assert c.verdict is Verdict.BREACH and c.value == 0.08 and c.bound == pytest.approx(0.06)
    assert "above stable 0.04 + 0.02" in c.message


def test_relative_bound_against_capable_only_falls_back_to_whole_revision() -> None:
    # the capable-only baseline has no data for the cheap tier: compare with all its tiers
    fake = FakeProvider(answers(**{rel_q(CANARY.name, "small"): 0.05, rel_q(CAPABLE, None): 0.04}))
    (c,) = observe("p", "ns", CANARY_SPEC, status(BASELINE), slos(REL), fake).checks
    assert c.verdict is Verdict.PASS and c.stable_value == 0.04
    assert "compared with all its tiers" in c.message


CAPABLE = BASELINE.name


def test_relative_bound_falls_back_to_previous_stable_value() -> None:
    last = Analysis(
        time=datetime(2026, 1, 1, tzinfo=UTC),
        result="Pass",
        counted=True,
        checks=[
            CheckResult(
                slo="q",
                objective="o",
                tier="small",
                revision=CANARY.name,
                verdict="PASS",
                value=0.03,
                stable_value=0.01,
            )
        ],
    )
    fake = FakeProvider(answers(**{rel_q(CANARY.name, "small"): 0.05}))
    (c,) = observe("p", "ns", CANARY_SPEC, status(last=last), slos(REL), fake).checks
    assert c.verdict is Verdict.BREACH and c.stable_value == 0.01 and "previously observed" in c.message
    (c,) = observe("p", "ns", CANARY_SPEC, status(), slos(REL), fake).checks
    assert c.verdict is Verdict.NO_DATA and "no data to compare" in c.message


def test_missing_slo_and_bad_template_are_errors() -> None:
    spec = CANARY_SPEC.model_copy(update={"slos": [SLORef(name="q"), SLORef(name="gone")]})
    bad = obj(query='x{a="{{tenant}}"}', max=1)
    o = observe("p", "ns", spec, status(), slos(bad), FakeProvider(answers()))
    verdicts = [(c.slo, c.verdict) for c in o.checks]
    assert verdicts == [("q", Verdict.ERROR), ("gone", Verdict.ERROR)]
    assert "{{tenant}}" in o.checks[0].message and "not found" in o.checks[1].message


def test_objective_for_unknown_tier_is_an_error() -> None:
    o = observe(
        "p",
        "ns",
        CANARY_SPEC,
        status(),
        slos(obj(signal="error_rate", max=1, tier="huge")),
        FakeProvider(answers()),
    )
    assert o.checks[0].verdict is Verdict.ERROR and "not a tier" in o.checks[0].message


def test_query_count_per_interval() -> None:
    every_tier = obj(signal="latency_p95", max=2.0)
    fake = FakeProvider(answers(), default=0.0)
    o = observe("p", "ns", CANARY_SPEC, status(), slos(ERR, every_tier, REL), fake)
    # config + (1 + 2 + 1 canary checks) + 1 stable + 2 sample counts
    assert len(o.checks) == 4
    assert len(fake.queries) == 1 + 4 + 1 + 2
    assert o.samples == {"small": 120, "large": 40}


def test_observe_needs_a_canary() -> None:
    with pytest.raises(ValueError, match="canary"):
        observe("p", "ns", CANARY_SPEC, PolicyStatus(), slos(ERR), FakeProvider())
