"""PromQL for QualitySLO objectives, sample counts and the proxies' config hash.

Built-in signals are rendered from the metric names in :mod:`tierguard.metric_names` (counters with
``_total``, histograms with ``_bucket``). Every selector carries ``policy``, ``namespace`` (added by
the scrape; left out when ``namespace`` is None, e.g. a local Prometheus without it) and
``revision``, plus ``tier`` for per-tier checks. The window is the analysis interval.

Ratios have their numerator padded with ``or vector(0)``: a canary that never escalated has no
``escalated`` series at all, which must read as 0, not as no data; an empty or zero denominator
(no traffic) still gives no data (an empty result or NaN).

Custom queries are templates with ``{{policy}}``, ``{{namespace}}``, ``{{revision}}``, ``{{tier}}``
and ``{{interval}}``: an unknown placeholder, or one without a value (``{{tier}}`` in a
revision-wide check), is a :class:`TemplateError`, never an empty string in the query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .. import metric_names as m
from ..policy import CascadeSpec, Objective, QualitySLOSpec, Signal, SLORef

PLACEHOLDERS: tuple[str, ...] = ("policy", "namespace", "revision", "tier", "interval")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

QUANTILES: dict[str, float] = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}

REVISION_WIDE_SIGNALS: frozenset[str] = frozenset({"cost_per_request"})
"""Signals evaluated once per revision when the objective names no tier."""

NOT_FOR_LAST_TIER: frozenset[str] = frozenset({"escalation_rate", "shadow_disagreement"})
"""Signals skipped for the last tier when the objective names no tier: it never escalates, and it is
the reference shadow scoring compares the other tiers with."""


class TemplateError(ValueError):
    """A custom query template that cannot be rendered; the message says why."""


@dataclass(frozen=True)
class QueryContext:
    """The values a query is rendered with. ``tier=None``: revision-wide."""

    policy: str
    namespace: str | None
    revision: str
    interval: str
    tier: str | None = None

    def values(self) -> dict[str, str | None]:
        return {
            "policy": self.policy,
            "namespace": self.namespace,
            "revision": self.revision,
            "tier": self.tier,
            "interval": self.interval,
        }

    def for_revision(self, revision: str) -> QueryContext:
        return replace(self, revision=revision)

    def for_tier(self, tier: str | None) -> QueryContext:
        return replace(self, tier=tier)


# --- templates ---------------------------------------------------------------------------------


def template_placeholders(template: str) -> set[str]:
    """The placeholders a template uses; raises :class:`TemplateError` for unknown ones or stray
    braces."""
    names = set()
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in PLACEHOLDERS:
            allowed = ", ".join("{{" + p + "}}" for p in PLACEHOLDERS)
            raise TemplateError(f"unknown placeholder {{{{{name}}}}} in query (allowed: {allowed})")
        names.add(name)
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise TemplateError("unbalanced '{{' or '}}' in query template")
    return names


def render_template(template: str, values: Mapping[str, str | None]) -> str:
    """Substitute placeholders; every placeholder used must have a value."""
    used = template_placeholders(template)
    missing = sorted(n for n in used if values.get(n) is None)
    if missing:
        names = ", ".join("{{" + n + "}}" for n in missing)
        raise TemplateError(f"no value for {names} in this query (a revision-wide check has no tier)")

    def sub(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        assert value is not None
        return value

    return _PLACEHOLDER.sub(sub, template)


# --- selectors and built-in signals ------------------------------------------------------------


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(ctx: QueryContext, *, tier: bool = True, **extra: str) -> str:
    labels = {"policy": ctx.policy}
    if ctx.namespace is not None:
        labels["namespace"] = ctx.namespace
    labels["revision"] = ctx.revision
    if tier and ctx.tier is not None:
        labels["tier"] = ctx.tier
    labels.update(extra)
    return "{" + ",".join(f"{k}={quote(v)}" for k, v in labels.items()) + "}"


def _rate(metric: str, ctx: QueryContext, *, tier: bool = True, **extra: str) -> str:
    return f"sum(rate({metric}{selector(ctx, tier=tier, **extra)}[{ctx.interval}]))"


def _ratio(numerator: str, denominator: str) -> str:
    return f"({numerator} or vector(0)) / {denominator}"


def signal_query(signal: Signal, ctx: QueryContext, event: str | None = None) -> str:
    """PromQL for a built-in signal of one revision (and tier, unless ``ctx.tier`` is None);
    ``event`` names the outcome event of ``outcome_rate`` (None: every event)."""
    w = ctx.interval
    if signal == "escalation_rate":
        return _ratio(_rate(f"{m.ESCALATIONS}_total", ctx), _rate(f"{m.TIER_REQUESTS}_total", ctx))
    if signal == "error_rate":
        return _ratio(
            _rate(f"{m.TIER_REQUESTS}_total", ctx, outcome="error"), _rate(f"{m.TIER_REQUESTS}_total", ctx)
        )
    if signal in QUANTILES:
        q = QUANTILES[signal]
        return f"histogram_quantile({q}, sum by (le) (rate({m.TIER_LATENCY}_bucket{selector(ctx)}[{w}])))"
    if signal == "thumbs_down_rate":
        return _ratio(_rate(f"{m.FEEDBACK}_total", ctx, rating="down"), _rate(f"{m.FEEDBACK}_total", ctx))
    if signal == "shadow_disagreement":
        return _ratio(_rate(f"{m.SHADOW_DISAGREEMENTS}_total", ctx), _rate(f"{m.SHADOW_SAMPLES}_total", ctx))
    if signal == "confidence_drift":
        return f"max(max_over_time({m.CONFIDENCE_PSI}{selector(ctx)}[{w}]))"
    if signal == "cost_per_request":
        # a tier's cost (or the whole revision's) per request answered by the revision
        return _ratio(_rate(f"{m.COST_USD}_total", ctx), _rate(f"{m.REQUESTS}_total", ctx, tier=False))
    if signal == "review_accuracy":
        # exported by `tierguard review serve` from the labelled review sample (inclusion-weighted)
        return f"min(min_over_time({m.REVIEW_ACCURACY}{selector(ctx)}[{w}]))"
    if signal == "outcome_rate":
        # outcome events (by arrival) per request the tier answered
        events = (
            _rate(f"{m.OUTCOME_EVENTS}_total", ctx)
            if event is None
            else _rate(f"{m.OUTCOME_EVENTS}_total", ctx, event=event)
        )
        return _ratio(events, _rate(f"{m.REQUESTS}_total", ctx, status="ok"))
    raise ValueError(f"unknown signal {signal!r}")


def objective_query(obj: Objective, ctx: QueryContext) -> str:
    """PromQL for one objective in ``ctx``; raises :class:`TemplateError` for a bad template."""
    if obj.signal is not None:
        return signal_query(obj.signal, ctx, obj.event)
    assert obj.query is not None
    return render_template(obj.query, ctx.values())


def objective_tiers(obj: Objective, tiers: Sequence[str]) -> list[str | None]:
    """The tiers an objective is checked for, ``None`` meaning once, revision-wide.

    An objective with a ``tier`` is checked for that tier. Without one it is checked for every
    tier, except: revision-wide signals (``cost_per_request``) and custom queries without
    ``{{tier}}`` are checked once, and ``escalation_rate`` and ``shadow_disagreement`` skip the
    last tier (it always answers, and it is the reference of shadow scoring).
    """
    if obj.tier is not None:
        return [obj.tier]
    if obj.signal is not None:
        if obj.signal in REVISION_WIDE_SIGNALS:
            return [None]
        if obj.signal in NOT_FOR_LAST_TIER:
            return list(tiers[:-1])
        return list(tiers)
    assert obj.query is not None
    return list(tiers) if "tier" in template_placeholders(obj.query) else [None]


def samples_query(ctx: QueryContext) -> str:
    """Requests a tier of a revision handled in the window (all tiers when ``ctx.tier`` is None)."""
    return f"sum(increase({m.TIER_REQUESTS}_total{selector(ctx)}[{ctx.interval}]))"


def config_current_query(policy: str, namespace: str | None, config_hash: str) -> str:
    """The share of the policy's proxies that report ``config_hash`` (1 when all do; no data
    when no proxy reports any config)."""
    base: dict[str, str] = {"policy": policy}
    if namespace is not None:
        base["namespace"] = namespace
    every = "{" + ",".join(f"{k}={quote(v)}" for k, v in base.items()) + "}"
    current = "{" + ",".join(f"{k}={quote(v)}" for k, v in {**base, "config_hash": config_hash}.items()) + "}"
    return f"(count({m.CONFIG_INFO}{current}) or vector(0)) / count({m.CONFIG_INFO}{every})"


# --- validation (for Ready=False on policies that cannot work) ---------------------------------


def validate_slos(
    refs: Sequence[SLORef], slos: Mapping[str, QualitySLOSpec], cascade: CascadeSpec | None = None
) -> list[str]:
    """Problems that make a policy's SLO references unusable, as messages saying what to fix:
    unknown QualitySLO names, bad query templates, objectives naming a tier the cascade lacks."""
    problems: list[str] = []
    tiers = [t.name for t in cascade.tiers] if cascade is not None else None
    for ref in refs:
        slo = slos.get(ref.name)
        if slo is None:
            problems.append(f"spec.slos: QualitySLO {ref.name!r} not found in the policy's namespace")
            continue
        for obj in slo.objectives:
            where = f"QualitySLO {ref.name!r} objective {obj.name!r}"
            if obj.query is not None:
                try:
                    template_placeholders(obj.query)
                except TemplateError as err:
                    problems.append(f"{where}: {err}")
            if tiers is not None and obj.tier is not None and obj.tier not in tiers:
                problems.append(
                    f"{where}: tier {obj.tier!r} is not a tier of the cascade ({', '.join(tiers)})"
                )
    return problems
