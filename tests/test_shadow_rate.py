"""The operator-managed shadow rate: the pure choice, the status transition, the rendered config,
the queries (against an in-memory provider) and the proxy's per-revision rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from tierguard.kube import render
from tierguard.kube.control import format_status
from tierguard.kube.main import metrics_observer
from tierguard.metrics.fake import FakeProvider
from tierguard.metrics.provider import ProviderError, QueryError
from tierguard.policy import (
    CascadePolicySpec,
    CascadeSpec,
    PolicyError,
    ProxyConfig,
    Revision,
    ShadowBudget,
    Tier,
    parse_policy_spec,
    proxy_config_from_data,
)
from tierguard.rollout.observations import ShadowObservation
from tierguard.rollout.shadow_observe import (
    accepted_query,
    observe_shadow,
    shadow_cost_per_call_query,
    shadow_spend_query,
    tier_cost_per_call_query,
)
from tierguard.rollout.shadow_rate import choose_shadow_rate, next_shadow
from tierguard.rollout.slo import QueryContext
from tierguard.rollout.status import PolicyStatus, ShadowStatus

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
BUDGET = ShadowBudget(max_spend_per_hour=1.0, max_rate=0.8)


def obs(accepted: dict[str, float | None] | None = None, cost: float | None = 0.001, other: float = 0.0):
    return ShadowObservation({"cheap": 1.0} if accepted is None else accepted, cost, other)


# --- choose_shadow_rate: a table -----------------------------------------------------------------
# Accepted answers per second x 60 s interval = per interval; needed = 1.2 x minSamples / that.
# Spend per hour = other + rate x (sum of accepted per second) x 3600 x cost per call.

CASES: list[tuple[str, dict[str, Any], str, float, float | None]] = [
    # id, choose_shadow_rate arguments, reason, rate, expected spend per hour
    # 1/s x 60 = 60 per interval; 50 samples x 1.2 / 60 = 1.0 > maxRate 0.8; 0.8 x 3600 x 0.001 = 2.88 $/h > 1
    ("capped-by-budget", {}, "CappedByBudget", 0.277, 0.9972),
    # 10/s: 600 per interval, 60/600 = 0.1; spend 0.1 x 10 x 3.6 = 3.6 $/h: a larger budget
    (
        "raised-for-samples",
        {"observed": obs({"cheap": 10.0}), "budget": ShadowBudget(max_spend_per_hour=5.0)},
        "RaisedForSamples",
        0.1,
        3.6,
    ),
    # heavy traffic: 100/s, 6000 per interval: 0.01 < base 0.05
    ("base-is-enough", {"observed": obs({"cheap": 100.0})}, "Base", 0.05, 0.05 * 100 * 3.6),
    # free shadow calls: only maxRate limits
    ("capped-by-max-rate", {"observed": obs(cost=0.0)}, "CappedByMaxRate", 0.8, 0.0),
    ("no-traffic", {"observed": obs({"cheap": None})}, "NoTrafficObserved", 0.05, None),
    ("zero-traffic", {"observed": obs({"cheap": 0.0})}, "NoTrafficObserved", 0.05, None),
    ("no-tiers", {"observed": obs({})}, "NoTrafficObserved", 0.05, None),
    ("no-cost", {"observed": obs(cost=None)}, "NoCostObserved", 0.05, None),
    (
        "provider-error",
        {"observed": ShadowObservation(error="connection refused")},
        "ProviderError",
        0.05,
        None,
    ),
    # the slowest cheaper tier sets the rate: 0.5/s -> 30 per interval -> 60/30 = 2 > maxRate;
    # the budget allows 1 / (2.5/s x 3.6) = 0.111
    ("slowest-tier", {"observed": obs({"a": 2.0, "b": 0.5})}, "CappedByBudget", 0.111, 0.999),
    # a tier without data is left out, the others decide
    (
        "tier-without-data",
        {"observed": obs({"a": 10.0, "b": None}), "budget": ShadowBudget(max_spend_per_hour=5.0)},
        "RaisedForSamples",
        0.1,
        3.6,
    ),
    # the stable's shadow spend uses up the budget: never below the base rate
    ("budget-spent-by-stable", {"observed": obs(other=2.0)}, "CappedByBudget", 0.05, 2.18),
    # part of it: (1 - 0.5) / 3.6 = 0.138
    ("budget-shared-with-stable", {"observed": obs(other=0.5)}, "CappedByBudget", 0.138, 0.9968),
    # a base rate above what is needed stays
    ("never-below-base", {"observed": obs({"cheap": 100.0}), "base_rate": 0.3}, "Base", 0.3, 108.0),
    # a zero budget: base rate (0 here)
    (
        "zero-budget",
        {"budget": ShadowBudget(max_spend_per_hour=0.0), "base_rate": 0.0},
        "CappedByBudget",
        0.0,
        0.0,
    ),
    # rounded up to 3 significant digits: 60 / 7 / 60 ... 1.2 x 50 / (7 x 60) = 0.142857 -> 0.143
    (
        "rounded-up-when-raised",
        {"observed": obs({"cheap": 7.0}), "budget": ShadowBudget(max_spend_per_hour=100.0)},
        "RaisedForSamples",
        0.143,
        0.143 * 7 * 3.6,
    ),
    # a current rate that is enough and at most 25% above the need is kept (no ConfigMap churn)
    (
        "previous-kept",
        {"observed": obs({"cheap": 10.0}), "budget": ShadowBudget(max_spend_per_hour=5.0), "previous": 0.12},
        "RaisedForSamples",
        0.12,
        0.12 * 36,
    ),
    (
        "previous-too-high",
        {"observed": obs({"cheap": 10.0}), "budget": ShadowBudget(max_spend_per_hour=5.0), "previous": 0.2},
        "RaisedForSamples",
        0.1,
        3.6,
    ),
    (
        "previous-too-low",
        {"observed": obs({"cheap": 10.0}), "budget": ShadowBudget(max_spend_per_hour=5.0), "previous": 0.09},
        "RaisedForSamples",
        0.1,
        3.6,
    ),
    # a kept rate must still fit the budget: 0.12 x 36 = 4.32 > 4
    (
        "previous-over-budget",
        {"observed": obs({"cheap": 10.0}), "budget": ShadowBudget(max_spend_per_hour=4.0), "previous": 0.12},
        "RaisedForSamples",
        0.1,
        3.6,
    ),
]


@pytest.mark.parametrize(
    ("args", "reason", "rate", "spend"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_choose_shadow_rate(args: dict[str, Any], reason: str, rate: float, spend: float | None) -> None:
    kw: dict[str, Any] = {
        "base_rate": 0.05,
        "budget": BUDGET,
        "min_samples": 50,
        "interval_seconds": 60.0,
        "observed": obs(),
    }
    kw.update(args)
    got = choose_shadow_rate(**kw)
    assert (got.reason, got.rate) == (reason, pytest.approx(rate)), got
    if spend is None:
        assert got.expected_spend_per_hour is None
    else:
        assert got.expected_spend_per_hour == pytest.approx(spend, abs=1e-9)
    assert got.rate >= kw["base_rate"] and got.message


def test_a_budget_cap_is_never_exceeded_and_a_raise_always_collects_the_samples() -> None:
    """Over a grid of traffic, cost and budgets: spend within the budget unless the base rate
    alone exceeds it, and a RaisedForSamples rate collects minSamples x headroom per interval."""
    for traffic in (0.01, 0.3, 1.0, 7.0, 50.0, 900.0):
        for cost in (0.0, 1e-5, 1e-3, 0.05):
            for limit in (0.0, 0.1, 1.0, 20.0):
                budget = ShadowBudget(max_spend_per_hour=limit, max_rate=0.9)
                got = choose_shadow_rate(0.02, budget, 40, 30.0, obs({"t": traffic}, cost))
                assert 0.02 <= got.rate <= 0.9
                assert got.expected_spend_per_hour is not None
                if got.rate > 0.02:
                    assert got.expected_spend_per_hour <= limit + 1e-9, (traffic, cost, limit, got)
                if got.reason == "RaisedForSamples":
                    assert got.rate * traffic * 30.0 >= 40 * 1.2 - 1e-6, (traffic, cost, limit, got)


# --- next_shadow: the status -----------------------------------------------------------------------


def cascade(threshold: float) -> CascadeSpec:
    return CascadeSpec(
        tiers=[
            Tier(
                name=n,
                base_url=f"http://{n}:8000/v1",
                model=n,
                price_output_per_million=p,
                confidence={"threshold": threshold},
            )
            for n, p in (("cheap", 1.0), ("big", 10.0))
        ]
    )


STABLE = Revision.of(cascade(0.5))
CANARY = Revision.of(cascade(0.6))


def policy_spec(budget: dict[str, Any] | None = None, shadow_rate: float = 0.05) -> CascadePolicySpec:
    proxy: dict[str, Any] = {"shadowRate": shadow_rate}
    if budget is not None:
        proxy["shadowBudget"] = budget
    return CascadePolicySpec.model_validate(
        {
            **cascade(0.6).to_yaml_dict(),
            "rollout": {"interval": "1m", "minSamples": 50},
            "proxy": proxy,
        }
    )


def rolling(shadow: ShadowStatus | None = None, phase: str = "Progressing", weight: int = 10) -> PolicyStatus:
    return PolicyStatus(
        phase=phase,  # type: ignore[arg-type]
        stable_revision=STABLE.name,
        canary_revision=CANARY.name,
        canary_weight=weight,
        stable=STABLE,
        canary=CANARY,
        shadow=shadow,
    )


SPEC = policy_spec({"maxSpendPerHour": 1.0, "maxRate": 0.8})


def test_an_analysis_sets_the_canary_rate_in_the_status() -> None:
    # 3 accepted/s x 60 s = 180 per interval: 1.2 x 50 / 180 = 0.333 -> 0.334; 0.334 x 3 x 0.36 $/h
    st = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    sh = st.shadow
    assert sh is not None
    assert (sh.revision, sh.rate, sh.reason, sh.base_rate, sh.max_spend_per_hour, sh.time) == (
        CANARY.name,
        0.334,
        "RaisedForSamples",
        0.05,
        1.0,
        T0,
    )
    assert sh.expected_spend_per_hour == pytest.approx(0.334 * 3 * 0.36)
    assert "60.1 shadow samples per interval on tier cheap (of 50)" in sh.message
    # what goes into .status
    d = st.to_dict()["shadow"]
    assert d["reason"] == "RaisedForSamples" and d["baseRate"] == 0.05 and d["expectedSpendPerHour"] > 0
    # a budget too small for the need caps it (1 $/h at 10/s and 1e-3 $ per call allows 0.0277,
    # below the base rate: the base rate)
    capped = next_shadow(rolling(), SPEC, obs({"cheap": 10.0}), T0).shadow
    assert capped is not None and (capped.reason, capped.rate) == ("CappedByBudget", 0.05)
    assert capped.message == (
        "collecting 50 shadow samples per interval on tier cheap needs rate 0.1; the budget of 1 USD/h "
        "allows 0.0277 (the base rate 0.05 is the floor): 30.0 shadow samples per interval on tier cheap (of 50)"
    )


def test_between_analyses_the_rate_stays() -> None:
    st = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    assert st.shadow is not None and st.shadow.reason == "RaisedForSamples"
    assert next_shadow(st, SPEC, None, T0 + timedelta(seconds=5)) is st


def test_an_unchanged_choice_keeps_its_time() -> None:
    st = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    again = next_shadow(st, SPEC, obs({"cheap": 3.0}, cost=1e-4), T0 + timedelta(minutes=1))
    assert again is st


@pytest.mark.parametrize("phase", ["Succeeded", "RolledBack", "Aborted"])
def test_the_rate_returns_to_the_base_when_the_rollout_ends(phase: str) -> None:
    raised = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    assert raised.shadow is not None and raised.shadow.rate > 0.05
    done = raised.model_copy(update={"phase": phase, "canary_weight": 0})
    if phase == "Succeeded":
        done = done.model_copy(update={"canary": None, "canary_revision": None, "stable": CANARY})
    after = next_shadow(done, SPEC, obs({"cheap": 3.0}, cost=1e-4), T0 + timedelta(minutes=1))
    assert after.shadow is not None
    assert (after.shadow.revision, after.shadow.rate, after.shadow.reason) == (None, 0.05, "Base")
    # and nothing overrides the base rate in the proxy config
    config = render.proxy_config("chat", "prod", SPEC, after)
    assert config is not None and config.shadow_rates == {}


def test_a_new_canary_starts_at_the_base_rate() -> None:
    old = ShadowStatus(
        revision="older", rate=0.5, base_rate=0.05, reason="RaisedForSamples", max_spend_per_hour=1.0, time=T0
    )
    st = next_shadow(rolling(old), SPEC, None, T0)
    assert st.shadow is not None and (st.shadow.revision, st.shadow.rate) == (CANARY.name, 0.05)


def test_without_a_budget_the_operator_leaves_the_rate_alone() -> None:
    plain = policy_spec(None)
    old = ShadowStatus(
        revision=CANARY.name,
        rate=0.5,
        base_rate=0.05,
        reason="RaisedForSamples",
        max_spend_per_hour=1.0,
        time=T0,
    )
    assert next_shadow(rolling(), plain, obs(), T0).shadow is None
    assert next_shadow(rolling(old), plain, obs(), T0).shadow is None  # a budget removed mid-rollout


def test_traffic_seen_before_a_step_advance_is_scaled_to_the_new_weight() -> None:
    seen = ShadowObservation({"cheap": 3.0, "mid": None}, 1e-4, 0.9, canary_weight=10)
    at20 = seen.at_weight(20)
    assert at20.accepted_per_second == {"cheap": pytest.approx(6.0), "mid": None}
    assert at20.other_spend_per_hour == pytest.approx(0.9 * 80 / 90) and at20.canary_weight == 20
    assert seen.at_weight(10) is seen and ShadowObservation({"a": 1.0}).at_weight(50).accepted_per_second == {
        "a": 1.0
    }
    assert seen.at_weight(100).other_spend_per_hour == 0.0
    # the analysis that moved 10% -> 20% chooses for 20%: twice the traffic, half the rate
    seen = ShadowObservation({"cheap": 3.0}, 1e-4, canary_weight=10)
    same = next_shadow(rolling(weight=10), SPEC, seen, T0).shadow
    advanced = next_shadow(rolling(weight=20), SPEC, seen, T0).shadow
    assert same is not None and advanced is not None
    assert (same.rate, advanced.rate) == (0.334, 0.167)


def test_budget_min_samples_overrides_the_rollouts() -> None:
    spec = policy_spec({"maxSpendPerHour": 100.0, "minSamples": 6})
    st = next_shadow(rolling(), spec, obs({"cheap": 1.0}, cost=1e-3), T0)
    assert st.shadow is not None and st.shadow.rate == pytest.approx(0.12)  # 1.2 x 6 / 60


# --- the rendered proxy config ---------------------------------------------------------------------


def test_the_canary_gets_the_chosen_rate_and_the_stable_keeps_the_base() -> None:
    st = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    config = render.proxy_config("chat", "prod", SPEC, st)
    assert config is not None and st.shadow is not None
    assert config.shadow_rates == {CANARY.name: st.shadow.rate}
    assert config.shadow_rate_for(CANARY.name) == st.shadow.rate
    assert config.shadow_rate_for(STABLE.name) == 0.05
    data = yaml.safe_load(render.config_yaml(config))
    assert data["shadowRates"] == {CANARY.name: st.shadow.rate}
    assert proxy_config_from_data(data, "cm").shadow_rate_for(CANARY.name) == st.shadow.rate
    # a rate change is not a new config hash: it never voids an analysis interval
    base = render.proxy_config("chat", "prod", SPEC, rolling())
    assert base is not None and "shadowRates" not in base.to_yaml_dict()
    assert base.config_hash() == config.config_hash()
    # at weight 0 (no canary served) there is nothing to override
    off = render.proxy_config("chat", "prod", SPEC, st.model_copy(update={"canary_weight": 0}))
    assert off is not None and off.shadow_rates == {}


def test_a_config_with_rates_for_unknown_revisions_is_rejected() -> None:
    data = {"kind": "ProxyConfig", "stable": STABLE.model_dump(by_alias=True), "shadowRates": {"nope": 0.5}}
    with pytest.raises(PolicyError, match="shadowRates names revisions that are not served: nope"):
        proxy_config_from_data(data, "cm")
    data["shadowRates"] = {STABLE.name: 1.5}
    with pytest.raises(PolicyError, match="shadowRates"):
        proxy_config_from_data(data, "cm")


def test_shadow_budget_is_validated() -> None:
    with pytest.raises(PolicyError, match="maxSpendPerHour"):
        parse_policy_spec({**cascade(0.5).to_yaml_dict(), "proxy": {"shadowBudget": {"maxRate": 0.5}}})
    with pytest.raises(PolicyError, match="maxRate"):
        parse_policy_spec(
            {**cascade(0.5).to_yaml_dict(), "proxy": {"shadowBudget": {"maxSpendPerHour": 1, "maxRate": 0}}}
        )


# --- the queries, against an in-memory provider ----------------------------------------------------


CTX = QueryContext(policy="chat", namespace="prod", revision=CANARY.name, interval="1m")


def test_observe_shadow_reads_traffic_cost_and_the_stables_spend() -> None:
    provider = FakeProvider(
        {
            accepted_query(CTX.for_tier("cheap")): 2.5,
            shadow_cost_per_call_query(CTX): 0.002,
            shadow_spend_query(CTX.for_revision(STABLE.name)): 0.4,
        }
    )
    got = observe_shadow("chat", "prod", "1m", CANARY, STABLE, provider)
    assert got == ShadowObservation({"cheap": 2.5}, 0.002, 0.4)
    assert 'status="ok"' in accepted_query(CTX.for_tier("cheap"))
    assert 'tier="cheap"' in accepted_query(CTX.for_tier("cheap"))


def test_without_shadow_calls_the_cost_is_the_last_tiers_per_call() -> None:
    provider = FakeProvider({tier_cost_per_call_query(CTX.for_tier("big")): 0.01})
    got = observe_shadow("chat", "prod", "1m", CANARY, STABLE, provider)
    assert got == ShadowObservation({"cheap": None}, 0.01, 0.0)
    assert 'outcome!~"error|client_error"' in tier_cost_per_call_query(CTX.for_tier("big"))


def test_no_data_is_not_an_error_and_an_error_is_not_no_data() -> None:
    empty = observe_shadow("chat", "prod", "1m", CANARY, STABLE, FakeProvider())
    assert empty == ShadowObservation({"cheap": None}, None, 0.0) and empty.error is None
    for failure in (ProviderError("connection refused"), QueryError("parse error")):
        got = observe_shadow("chat", "prod", "1m", CANARY, STABLE, FakeProvider(default=failure))
        assert got.error and got.accepted_per_second == {}
        assert choose_shadow_rate(0.05, BUDGET, 50, 60.0, got).reason == "ProviderError"


def test_the_production_observer_adds_the_shadow_observation_only_with_a_budget() -> None:
    st = rolling().model_copy(update={"config_hash": "h"})
    provider = FakeProvider(default=1.0)
    observer = metrics_observer(provider)
    kw: dict[str, Any] = {"policy": "chat", "namespace": "prod", "status": st, "slos": {}, "now": T0}
    assert observer(spec=policy_spec(None), **kw).shadow is None
    asked = len(provider.queries)
    got = observer(spec=SPEC, **kw)
    assert got.shadow == ShadowObservation({"cheap": 1.0}, 1.0, 1.0, canary_weight=10)
    assert len(provider.queries) - asked == asked + 3  # the same SLO queries plus three for the rate
    down = metrics_observer(FakeProvider(down=True))(spec=SPEC, **kw)
    assert down.provider_error and down.shadow is not None and down.shadow.error == down.provider_error


# --- the proxy's per-revision rate -----------------------------------------------------------------


def test_proxy_config_shadow_rate_for_falls_back_to_the_setting() -> None:
    config = ProxyConfig(
        stable=STABLE,
        canary=CANARY,
        canary_weight=5,
        settings={"shadowRate": 0.1},
        shadow_rates={CANARY.name: 0.7},
    )
    assert (config.shadow_rate_for(STABLE.name), config.shadow_rate_for(CANARY.name)) == (0.1, 0.7)


def test_tierguard_status_shows_the_shadow_rate() -> None:
    st = next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, cost=1e-4), T0)
    text = format_status({"metadata": {"name": "chat", "namespace": "prod"}, "status": st.to_dict()})
    assert (
        f"  shadow rate:    0.334 for {CANARY.name} (RaisedForSamples; base 0.05; expected spend 0.3607 of "
        "1.0 USD/h)\n                  raised to collect 60.1 shadow samples per interval on tier cheap (of 50)"
    ) in text
    assert "shadow rate" not in format_status({"metadata": {}, "status": rolling().to_dict()})


def test_pod_annotations_carry_the_rates_the_hash_leaves_out() -> None:
    raised = render.proxy_config(
        "chat", "prod", SPEC, next_shadow(rolling(), SPEC, obs({"cheap": 3.0}, 1e-4), T0)
    )
    base = render.proxy_config("chat", "prod", SPEC, rolling())
    assert raised is not None and base is not None
    h = raised.config_hash()
    assert render.pod_annotations(base) == {render.ANNOTATION_CONFIG_HASH: h}
    stamped = render.pod_annotations(raised)
    assert stamped == {
        render.ANNOTATION_CONFIG_HASH: h,
        render.ANNOTATION_SHADOW_RATES: f"{CANARY.name}=0.334",
    }
    assert render.pod_annotation_patch(raised, stamped) == {}
    assert render.pod_annotation_patch(raised, {render.ANNOTATION_CONFIG_HASH: h}) == {
        render.ANNOTATION_SHADOW_RATES: f"{CANARY.name}=0.334"
    }
    # back at the base rate: the stale stamp is removed (a merge patch null), the hash left alone
    assert render.pod_annotation_patch(base, stamped) == {render.ANNOTATION_SHADOW_RATES: None}
    assert render.pod_annotation_patch(base, None) == {render.ANNOTATION_CONFIG_HASH: h}
