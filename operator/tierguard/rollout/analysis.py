"""One analysis interval: query the metrics provider and turn the answers into
:class:`~tierguard.rollout.observations.Observations` for :func:`~tierguard.rollout.decide.decide`.

Queries per interval: one for the config hash, one sample count per checked tier (the entry tier
always), one per (objective, tier) for the canary, and for relative bounds one or two more for the
stable revision. An unreachable provider stops at the first query. With
``spec.proxy.shadowBudget`` the shadow rate needs a few more (:mod:`.shadow_observe`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..metrics.provider import MetricsProvider, ProviderError, QueryError
from ..policy import CascadePolicySpec, Objective, QualitySLOSpec
from .observations import Check, Observations, Verdict
from .slo import (
    QueryContext,
    TemplateError,
    config_current_query,
    objective_query,
    objective_tiers,
    samples_query,
)
from .status import PolicyStatus


class _Unreachable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _query(provider: MetricsProvider, promql: str) -> float | None:
    """QueryError propagates (a check ERROR); any other ProviderError aborts the analysis."""
    try:
        return provider.query(promql)
    except QueryError:
        raise
    except ProviderError as err:
        raise _Unreachable(str(err) or type(err).__name__) from None


def _last_stable_value(status: PolicyStatus, slo: str, objective: str, tier: str | None) -> float | None:
    last = status.last_analysis
    if last is None:
        return None
    for c in last.checks:
        if c.slo == slo and c.objective == objective and c.tier == tier and c.stable_value is not None:
            return c.stable_value
    return None


def _stable_value(
    provider: MetricsProvider,
    obj: Objective,
    ctx: QueryContext,
    stable_revision: str,
    status: PolicyStatus,
    slo: str,
) -> tuple[float | None, str]:
    """The stable revision's value for a relative bound, with the fallbacks documented in
    docs/rollout.md: same tier, then (built-in signals) the whole revision, then the value recorded
    by the previous analysis."""
    stable_ctx = ctx.for_revision(stable_revision)
    value = _query(provider, objective_query(obj, stable_ctx))
    if value is not None:
        return value, ""
    if obj.signal is not None and ctx.tier is not None:
        value = _query(provider, objective_query(obj, stable_ctx.for_tier(None)))
        if value is not None:
            return (
                value,
                f"stable {stable_revision} has no data for tier {ctx.tier}: compared with all its tiers",
            )
    value = _last_stable_value(status, slo, obj.name, ctx.tier)
    if value is not None:
        return (
            value,
            f"stable {stable_revision} has no data in this window: using its previously observed value",
        )
    return None, f"stable revision {stable_revision} has no data to compare with"


def _evaluate(
    provider: MetricsProvider,
    slo: str,
    obj: Objective,
    ctx: QueryContext,
    stable_revision: str | None,
    status: PolicyStatus,
) -> Check:
    def check(
        verdict: Verdict,
        value: float | None = None,
        bound: float | None = None,
        stable_value: float | None = None,
        message: str = "",
    ) -> Check:
        return Check(slo, obj.name, ctx.tier, ctx.revision, verdict, value, bound, stable_value, message)

    try:
        value = _query(provider, objective_query(obj, ctx))
    except (TemplateError, QueryError) as err:
        return check(Verdict.ERROR, message=f"bad query: {err}")
    if value is None:
        return check(Verdict.NO_DATA, message="the query returned no data")
    if obj.max is not None and value > obj.max:
        return check(Verdict.BREACH, value=value, bound=obj.max, message=f"above the maximum {obj.max:g}")
    if obj.min is not None and value < obj.min:
        return check(Verdict.BREACH, value=value, bound=obj.min, message=f"below the minimum {obj.min:g}")
    if obj.max_increase_over_stable is None:
        bound = obj.max if obj.max is not None else obj.min
        return check(Verdict.PASS, value=value, bound=bound)
    if stable_revision is None:
        return check(Verdict.NO_DATA, value=value, message="no stable revision to compare with")
    try:
        stable, note = _stable_value(provider, obj, ctx, stable_revision, status, slo)
    except (TemplateError, QueryError) as err:
        return check(Verdict.ERROR, value=value, message=f"bad query for the stable revision: {err}")
    if stable is None:
        return check(Verdict.NO_DATA, value=value, message=note)
    bound = stable + obj.max_increase_over_stable
    if value > bound:
        msg = f"above stable {stable:.6g} + {obj.max_increase_over_stable:g}" + (f" ({note})" if note else "")
        return check(Verdict.BREACH, value=value, bound=bound, stable_value=stable, message=msg)
    return check(Verdict.PASS, value=value, bound=bound, stable_value=stable, message=note)


def observe(
    policy_name: str,
    namespace: str | None,
    spec: CascadePolicySpec,
    status: PolicyStatus,
    slos: Mapping[str, QualitySLOSpec],
    provider: MetricsProvider,
    *,
    config_hash: str | None = None,
) -> Observations:
    """Query everything one analysis of the canary needs.

    ``slos`` maps QualitySLO names to their specs (those ``spec.slos`` refers to); a missing one
    gives an ``ERROR`` check. ``config_hash`` is the hash of the proxy config rendered for
    ``status`` (default: ``status.config_hash``). ``namespace=None`` leaves the namespace label
    out of every query. Never raises for provider trouble: an unreachable provider, or a failing
    config-hash or sample query, is reported in ``provider_error``; a bad objective query as an
    ``ERROR`` check.
    """
    canary = status.canary
    if canary is None:
        raise ValueError("observe() needs a status with a canary revision")
    stable_revision = status.stable.name if status.stable is not None else None
    tiers = [t.name for t in canary.cascade.tiers]
    base = QueryContext(
        policy=policy_name, namespace=namespace, revision=canary.name, interval=spec.rollout.interval
    )
    expected = config_hash if config_hash is not None else status.config_hash
    try:
        # 1. do the proxies run the config rendered for this status?
        if expected is None:
            config_current, config_message = False, "no config hash recorded for the current status yet"
        else:
            try:
                share = _query(provider, config_current_query(policy_name, namespace, expected))
            except QueryError as err:  # the interval cannot count: a ProviderError hold
                return Observations(config_current=True, provider_error=f"config hash query: {err}")
            if share is None:
                config_current = False
                config_message = (
                    f"no proxy of policy {policy_name} reports its config (tierguard_config_info)"
                )
            else:
                config_current = share >= 1.0
                config_message = (
                    ""
                    if config_current
                    else f"{share:.0%} of the proxies report the current config {expected}"
                )

        # 2. checks, per objective and tier
        checks: list[Check] = []
        checked_tiers: list[str] = [tiers[0]]
        for ref in spec.slos:
            slo = slos.get(ref.name)
            if slo is None:
                checks.append(
                    Check(
                        ref.name,
                        "-",
                        None,
                        canary.name,
                        Verdict.ERROR,
                        message=f"QualitySLO {ref.name!r} not found",
                    )
                )
                continue
            for obj in slo.objectives:
                try:
                    obj_tiers = objective_tiers(obj, tiers)
                except TemplateError as err:
                    checks.append(
                        Check(ref.name, obj.name, None, canary.name, Verdict.ERROR, message=str(err))
                    )
                    continue
                for tier in obj_tiers:
                    if tier is not None and tier not in tiers:
                        checks.append(
                            Check(
                                ref.name,
                                obj.name,
                                tier,
                                canary.name,
                                Verdict.ERROR,
                                message=f"tier {tier!r} is not a tier of revision {canary.name}",
                            )
                        )
                        continue
                    if tier is not None and tier not in checked_tiers:
                        checked_tiers.append(tier)
                    checks.append(
                        _evaluate(provider, ref.name, obj, base.for_tier(tier), stable_revision, status)
                    )

        # 3. samples per checked tier
        samples: dict[str, int] = {}
        for tier in checked_tiers:
            try:
                n = _query(provider, samples_query(base.for_tier(tier)))
            except QueryError as err:
                return Observations(
                    tuple(checks), config_current, config_message, samples, f"sample query: {err}"
                )
            samples[tier] = round(n) if n is not None else 0
    except _Unreachable as err:
        return Observations(config_current=True, provider_error=err.message)
    return Observations(tuple(checks), config_current, config_message, samples)
