"""The Grafana dashboard: its panels' PromQL, built from the metric names the proxy exports (pure).

One definition serves three places: the dashboard JSON shipped in the Helm chart
(``charts/tierguard/dashboards/tierguard.json``, regenerated with ``python -m tierguard.dashboard
--write``), the "Dashboard panels" section of ``tierguard demo``'s report, and the test that runs
every panel's query against a real Prometheus scraping real proxies.

Queries use Grafana's variables ``$namespace`` and ``$policy`` (regular expressions) and
``$__rate_interval``; :func:`concrete` substitutes them to run a query outside Grafana.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metric_names as m

SEL = 'namespace=~"$namespace", policy=~"$policy"'
WINDOW = "$__rate_interval"
CHART_FILE = Path("charts") / "tierguard" / "dashboards" / "tierguard.json"
UID = "tierguard-overview"


def _rate(metric: str, extra: str = "", by: str = "revision, tier") -> str:
    labels = SEL + (", " + extra if extra else "")
    return f"sum by ({by}) (rate({metric}{{{labels}}}[{WINDOW}]))"


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, with a missing numerator series read as 0 where the denominator has
    traffic (a tier that never escalated has no escalation series)."""
    return f"({numerator} or ({denominator}) * 0) / {denominator}"


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    legend: str
    unit: str = "percentunit"
    description: str = ""


PANELS: tuple[Panel, ...] = (
    Panel(
        "Cost against capable-only",
        f"{_rate(f'{m.COST_USD}_total', by='policy, revision')} / "
        f"{_rate(f'{m.COUNTERFACTUAL_COST_USD}_total', by='policy, revision')}",
        "{{policy}} {{revision}}",
        description="What the cascade spends, as a share of sending every request to the last tier.",
    ),
    Panel(
        "Escalation rate",
        _ratio(_rate(f"{m.ESCALATIONS}_total"), _rate(f"{m.TIER_REQUESTS}_total")),
        "{{revision}} {{tier}}",
        description="Share of a tier's requests passed on to the next tier.",
    ),
    Panel(
        "Per-tier accuracy (shadow scoring)",
        "1 - " + _ratio(_rate(f"{m.SHADOW_DISAGREEMENTS}_total"), _rate(f"{m.SHADOW_SAMPLES}_total")),
        "{{revision}} {{tier}}",
        description="Share of a tier's accepted answers the last tier agrees with (spec.proxy.shadowRate).",
    ),
    Panel(
        "Shadow rate",
        f"max by (policy, revision) ({m.SHADOW_RATE}{{{SEL}}})",
        "{{policy}} {{revision}}",
        description="Share of accepted cheaper answers re-asked per revision: spec.proxy.shadowRate, or "
        "the canary's rate the operator chose within spec.proxy.shadowBudget.",
    ),
    Panel(
        "Thumbs-down rate (feedback)",
        _ratio(_rate(f"{m.FEEDBACK}_total", 'rating="down"'), _rate(f"{m.FEEDBACK}_total")),
        "{{revision}} {{tier}}",
        description="Share of user feedback (POST /v1/feedback) that is a thumbs down, by answering tier.",
    ),
    Panel(
        "Confidence drift (PSI)",
        f"max by (revision, tier) ({m.CONFIDENCE_PSI}{{{SEL}}})",
        "{{revision}} {{tier}}",
        unit="none",
        description="PSI of recent calibrated confidences against the tier's calibration reference.",
    ),
    Panel(
        "Canary weight",
        f"max by (policy) ({m.CANARY_WEIGHT}{{{SEL}}})",
        "{{policy}}",
        unit="percent",
        description="The canary revision's share of traffic, as the proxies serve it.",
    ),
    Panel(
        "Revisions served",
        f"count by (policy, stable_revision, canary_revision) ({m.CONFIG_INFO}{{{SEL}}})",
        "stable {{stable_revision}} canary {{canary_revision}}",
        unit="none",
        description="Proxy replicas per (stable, canary) pair: a rollout step reaching every replica.",
    ),
    Panel(
        "Answers per second by tier",
        _rate(f"{m.REQUESTS}_total", 'status="ok"'),
        "{{revision}} {{tier}}",
        unit="reqps",
        description="Requests answered, by revision and answering tier.",
    ),
    Panel(
        "Error rate by tier",
        _ratio(_rate(f"{m.TIER_REQUESTS}_total", 'outcome="error"'), _rate(f"{m.TIER_REQUESTS}_total")),
        "{{revision}} {{tier}}",
        description="Share of a tier's upstream calls that failed.",
    ),
    Panel(
        "Latency p95",
        "histogram_quantile(0.95, "
        f"sum by (le, revision) (rate({m.REQUEST_LATENCY}_bucket{{{SEL}}}[{WINDOW}])))",
        "{{revision}}",
        unit="s",
        description="End-to-end request latency through the cascade.",
    ),
)


def concrete(expr: str, window: str = "1m", namespace: str = ".*", policy: str = ".*") -> str:
    """The query with Grafana's variables replaced, to run against Prometheus directly."""
    return (
        expr.replace("$__rate_interval", window).replace("$namespace", namespace).replace("$policy", policy)
    )


def _variable(name: str, metric: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": f"label_values({metric}, {name})", "refId": f"{name}-values"},
        "definition": f"label_values({metric}, {name})",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schema 39)."""
    panels = []
    for i, p in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "description": p.description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": "A",
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": p.expr,
                        "legendFormat": p.legend,
                    }
                ],
            }
        )
    return {
        "uid": UID,
        "title": "tierguard: cascade cost, quality and rollouts",
        "tags": ["tierguard"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable("namespace", m.CONFIG_INFO),
                _variable("policy", m.CONFIG_INFO),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(grafana_dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierguard.dashboard", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {CHART_FILE} (from the repository root)")
    args = parser.parse_args(argv)
    if args.write:
        CHART_FILE.parent.mkdir(parents=True, exist_ok=True)
        CHART_FILE.write_text(render())
        print(f"wrote {CHART_FILE}")
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
