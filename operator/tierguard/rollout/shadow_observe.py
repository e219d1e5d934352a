"""What the shadow-rate choice needs from the metrics provider (:class:`.observations.ShadowObservation`).

Queries, over the analysis interval, from the metrics the proxies export:

* per cheaper tier of the canary: answers it accepted per second (``tierguard_requests_total`` with
  ``status="ok"`` and that tier as the answering tier: the answers shadow scoring samples from);
* USD per shadow call: the canary's ``tierguard_shadow_cost_usd_total`` over its
  ``tierguard_shadow_samples_total``; without shadow calls yet, its last tier's cost per call
  (``tierguard_cost_usd_total`` over its answered ``tierguard_tier_requests_total``), the call a
  shadow sample makes;
* the stable revision's shadow spend per hour (no data: none).

No data is ``None`` (never a raised rate); any provider failure is ``error``.
"""

from __future__ import annotations

from dataclasses import replace

from .. import metric_names as m
from ..metrics.provider import MetricsProvider, ProviderError
from ..policy import CascadePolicySpec, Revision
from .observations import Observations, ShadowObservation
from .slo import QueryContext, quote, selector
from .status import PolicyStatus


def accepted_query(ctx: QueryContext) -> str:
    """Answers of ``ctx.tier`` (of ``ctx.revision``) accepted per second in the window."""
    return f"sum(rate({m.REQUESTS}_total{selector(ctx, status='ok')}[{ctx.interval}]))"


def shadow_cost_per_call_query(ctx: QueryContext) -> str:
    window = ctx.interval
    revision = selector(ctx, tier=False)
    return (
        f"sum(rate({m.SHADOW_COST_USD}_total{revision}[{window}])) / "
        f"sum(rate({m.SHADOW_SAMPLES}_total{revision}[{window}]))"
    )


def tier_cost_per_call_query(ctx: QueryContext) -> str:
    answered = selector(ctx)[:-1] + f",outcome!~{quote('error|client_error')}}}"
    return (
        f"(sum(rate({m.COST_USD}_total{selector(ctx)}[{ctx.interval}])) or vector(0)) / "
        f"sum(rate({m.TIER_REQUESTS}_total{answered}[{ctx.interval}]))"
    )


def shadow_spend_query(ctx: QueryContext) -> str:
    """A revision's shadow spend in USD per hour over the window."""
    return f"sum(rate({m.SHADOW_COST_USD}_total{selector(ctx, tier=False)}[{ctx.interval}])) * 3600"


def observe_shadow(
    policy: str,
    namespace: str | None,
    interval: str,
    canary: Revision,
    stable: Revision | None,
    provider: MetricsProvider,
) -> ShadowObservation:
    """Query the canary's accepted traffic per cheaper tier, the cost per shadow call and the stable
    revision's shadow spend. Never raises for provider trouble (``error`` is set instead)."""
    ctx = QueryContext(policy=policy, namespace=namespace, revision=canary.name, interval=interval)
    tiers = [t.name for t in canary.cascade.tiers]
    try:
        accepted = {t: provider.query(accepted_query(ctx.for_tier(t))) for t in tiers[:-1]}
        cost = provider.query(shadow_cost_per_call_query(ctx))
        if cost is None:
            cost = provider.query(tier_cost_per_call_query(ctx.for_tier(tiers[-1])))
        other = None
        if stable is not None and stable.name != canary.name:
            other = provider.query(shadow_spend_query(ctx.for_revision(stable.name)))
    except ProviderError as err:
        return ShadowObservation(error=str(err) or type(err).__name__)
    return ShadowObservation(accepted, cost, other or 0.0)


def with_shadow(
    obs: Observations,
    policy: str,
    namespace: str | None,
    spec: CascadePolicySpec,
    status: PolicyStatus,
    provider: MetricsProvider,
) -> Observations:
    """``obs`` (an analysis of ``status``'s canary) with what the shadow-rate choice needs, when
    the policy has a shadow budget. Not asked when the analysis already found the provider failing."""
    if spec.proxy.shadow_budget is None or status.canary is None:
        return obs
    if obs.provider_error is not None:
        return replace(obs, shadow=ShadowObservation(error=obs.provider_error))
    shadow = observe_shadow(policy, namespace, spec.rollout.interval, status.canary, status.stable, provider)
    return replace(obs, shadow=replace(shadow, canary_weight=status.canary_weight))
