"""The demo's HTML report: one self-contained page (inline SVG and CSS, no scripts, no network)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from . import story
from .timeline import Snapshot, Timeline

W, H, PAD = 760, 200, 40
COLORS = {"v1": "#6b7280", "v2": "#2563eb", "v3": "#dc2626", "all": "#059669", "bound": "#f59e0b"}


def esc(x: object) -> str:
    return html.escape(str(x))


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def chart(
    title: str,
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]],
    t_max: float,
    y_max: float,
    *,
    hline: tuple[str, float] | None = None,
    y_unit: str = "%",
    y_scale: float = 100.0,
    step: bool = False,
) -> str:
    """A line chart as inline SVG: ``series`` are (name, colour, [(t, y)])."""
    t_max = max(t_max, 1.0)
    y_max = max(y_max, 1e-9)

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * t / t_max

    def y(v: float) -> float:
        return H - PAD + (2 * PAD - H) * min(v, y_max) / y_max

    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{esc(title)}">',
        f'<text x="{PAD}" y="16" class="title">{esc(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" class="axis"/>',
        f'<text x="{PAD - 4}" y="{y(y_max) + 4:.1f}" class="tick" text-anchor="end">'
        f"{y_max * y_scale:g}{y_unit}</text>",
        f'<text x="{PAD - 4}" y="{H - PAD + 4}" class="tick" text-anchor="end">0</text>',
        f'<text x="{W - PAD}" y="{H - PAD + 16}" class="tick" text-anchor="end">{t_max:.0f} s</text>',
    ]
    if hline is not None:
        name, v = hline
        parts.append(
            f'<line x1="{PAD}" y1="{y(v):.1f}" x2="{W - PAD}" y2="{y(v):.1f}" stroke="{COLORS["bound"]}" '
            f'stroke-dasharray="4 3"/><text x="{W - PAD}" y="{y(v) - 4:.1f}" class="tick" '
            f'text-anchor="end">{esc(name)}</text>'
        )
    for i, (name, color, points) in enumerate(series):
        if not points:
            continue
        coords: list[str] = []
        prev: tuple[float, float] | None = None
        for t, v in points:
            if step and prev is not None:
                coords.append(f"{x(t):.1f},{y(prev[1]):.1f}")
            coords.append(f"{x(t):.1f},{y(v):.1f}")
            prev = (t, v)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(coords)}">'
            f"<title>{esc(name)}</title></polyline>"
        )
        parts.append(
            f'<rect x="{PAD + 10 + 120 * i}" y="{H - 14}" width="10" height="10" fill="{color}"/>'
            f'<text x="{PAD + 24 + 120 * i}" y="{H - 5}" class="tick">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _series(snaps: Sequence[Snapshot]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"weight": [], "cost": [], "accuracy": []}
    for s in snaps:
        if s.chapter == "setup":
            continue
        out["weight"].append((s.t, float(s.weight if s.canary else 0)))
        if s.cost_ratio is not None:
            out["cost"].append((s.t, s.cost_ratio))
        if s.aggregate_accuracy is not None:
            out["accuracy"].append((s.t, s.aggregate_accuracy))
        for q in s.quality:
            if q.tier == story.CHEAP_TIER and q.disagreement is not None:
                out.setdefault(f"dis:{q.version}", []).append((s.t, q.disagreement))
    return out


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 820px; color: #111; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.ok { color: #047857; } .bad { color: #b91c1c; } .note { color: #555; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f3f4f6; } .chart { display: block; margin: .8em 0; }
.chart .title { font-weight: 600; font-size: 13px; } .chart .tick { font-size: 11px; fill: #444; }
.chart .axis { stroke: #999; } .warn { color: #b91c1c; font-weight: 600; }
"""


def render(
    tl: Timeline,
    phases: Mapping[str, story.Phase],
    problems: Sequence[str],
    wall_seconds: float,
    workload_label: str,
    seed: int,
) -> str:
    snaps = tl.snapshots
    t_max = max((s.t for s in snaps), default=1.0)
    s = _series(snaps)
    verdict = (
        '<p class="ok" id="verdict">The story happened as stated: v2 was promoted step by step, v3 was '
        "rolled back automatically on the cheap tier's quality.</p>"
        if not problems
        else '<p class="bad" id="verdict">The story did not happen as stated:</p><ul>'
        + "".join(f"<li>{esc(p)}</li>" for p in problems)
        + "</ul>"
    )
    rows = []
    for v in ("v2", "v3"):
        p = phases.get(v)
        if p is None:
            continue
        rows.append(
            f"<tr><td>{v}</td><td>{esc(story.DESCRIPTIONS[v])}</td><td>{esc(p.weights)}</td>"
            f"<td>{esc(p.final_phase)}</td><td>{esc(', '.join(p.breached) or '-')}</td>"
            f"<td>{pct(p.accuracy_all_traffic)}</td></tr>"
        )
    decisions = "".join(
        f'<tr><td>{d.t:.1f} s</td><td class="{"warn" if d.warning else ""}">{esc(d.reason)}</td>'
        f"<td>{esc(d.message)}</td></tr>"
        for d in tl.decisions
    )
    notes = "".join(f"<tr><td>{t:.1f} s</td><td>{esc(n)}</td></tr>" for t, n in tl.notes)
    dis_series = [
        (f"{v} {story.CHEAP_TIER}", COLORS[v], s[f"dis:{v}"]) for v in ("v1", "v2", "v3") if f"dis:{v}" in s
    ]
    top = max([0.3, *(pt[1] for _, _, pts in dis_series for pt in pts)])
    y_dis = min(1.0, math.ceil(top * 10) / 10)
    accuracy_target = (f"aggregate target {pct(story.AGGREGATE_ACCURACY_MIN)}", story.AGGREGATE_ACCURACY_MIN)
    charts = [
        chart("canary weight", [("canary weight", COLORS["v2"], s["weight"])], t_max, 100, y_unit="%",
              y_scale=1.0, step=True),
        chart(
            f"shadow disagreement of the {story.CHEAP_TIER} tier with the capable tier (last 15 s)",
            dis_series,
            t_max,
            y_dis,
            hline=(f"SLO {pct(story.DISAGREEMENT_MAX)}", story.DISAGREEMENT_MAX),
        ),
        chart("accuracy of all traffic (ground truth, last 15 s)",
              [("all traffic", COLORS["all"], s["accuracy"])], t_max, 1.0, hline=accuracy_target),
        chart("cost against capable-only (last 15 s)", [("cost / capable-only", COLORS["v1"], s["cost"])],
              t_max, max([1.0, *(pt[1] for pt in s["cost"])])),
    ]  # fmt: skip
    palette = ["#2563eb", "#dc2626", "#059669", "#6b7280", "#d97706", "#7c3aed", "#db2777", "#0891b2"]
    panel_html = []
    for pr in tl.panels:
        attrs = f'class="panel" data-title="{esc(pr.title)}" data-series="{len(pr.series)}"'
        if pr.error is not None:
            panel_html.append(
                f'<div {attrs} data-error="{esc(pr.error)}"><p class="bad">{esc(pr.title)}: '
                f"{esc(pr.error)}</p></div>"
            )
            continue
        scale = 100.0 if pr.unit in ("percentunit",) else 1.0
        top = max([1e-9, *(v for _, pts in pr.series for _, v in pts)])
        y_max = 1.0 if pr.unit == "percentunit" and top <= 1.0 else top
        series = [(name, palette[i % len(palette)], pts) for i, (name, pts) in enumerate(pr.series)]
        unit = "%" if pr.unit == "percentunit" else ""
        panel_html.append(
            f"<div {attrs}>" + chart(pr.title, series[:6], t_max, y_max, y_unit=unit, y_scale=scale)
            + f'<p class="note"><code>{esc(pr.query)}</code></p></div>'
        )  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tierguard demo report</title>
<style>{CSS}</style></head><body>
<h1>tierguard demo: a rollout and an automatic rollback</h1>
<p class="note">Data: {esc(workload_label)} (synthetic, seed {seed}). Everything ran on one machine:
etcd + kube-apiserver, Prometheus, the tierguard operator, two proxy replicas, two simulators, a load
generator. Wall time {wall_seconds:.0f} s.</p>
{verdict}
<h2>Versions</h2>
<table id="versions"><tr><th>version</th><th>change</th><th>canary weights</th><th>outcome</th>
<th>breached</th><th>accuracy of all traffic meanwhile</th></tr>{"".join(rows)}</table>
<h2>Timeline</h2>
{"".join(charts)}
<h2>Dashboard panels</h2>
<p class="note">The queries of the Grafana dashboard the Helm chart ships, run against this demo's
Prometheus over the whole run (rate windows of 15 s instead of Grafana's <code>$__rate_interval</code>).</p>
<div id="panels">{"".join(panel_html)}</div>
<h2>Decisions (the operator's Kubernetes events)</h2>
<table id="decisions"><tr><th>time</th><th>reason</th><th>message</th></tr>{decisions}</table>
<h2>What the demo did</h2>
<table id="notes"><tr><th>time</th><th>step</th></tr>{notes}</table>
</body></html>
"""
