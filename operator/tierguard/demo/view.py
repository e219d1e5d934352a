"""The live terminal view (rich) and the plain progress lines used without a terminal."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import story
from .timeline import Snapshot, Timeline


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def bar(weight: int, width: int = 40) -> Text:
    n = round(width * weight / 100)
    text = Text()
    text.append("█" * (width - n), style="green")
    text.append("█" * n, style="yellow")
    return text


def render(s: Snapshot, tl: Timeline, workload: str) -> RenderableType:
    head = Text.assemble(
        ("tierguard demo", "bold"),
        f"  {workload}   t={s.t:5.1f}s   ",
        (f"chapter {s.chapter}", "bold cyan"),
        f"   phase {s.phase}",
    )
    story_lines = Table.grid(padding=(0, 1))
    for v in ("v1", "v2", "v3"):
        mark = "▶" if v == s.chapter else " "
        story_lines.add_row(mark, Text(v, style="bold"), story.DESCRIPTIONS[v])

    traffic = Table.grid(padding=(0, 1))
    canary = f"{s.canary} {s.weight}%" if s.canary else "none"
    traffic.add_row("stable", Text(s.stable, style="green"), "canary", Text(canary, style="yellow"))
    traffic.add_row("split", bar(s.weight if s.canary else 0), "", "")
    traffic.add_row(
        "cost vs capable-only",
        Text(pct(s.cost_ratio), style="bold"),
        "escalation rate",
        pct(s.escalation_rate),
    )
    traffic.add_row(
        "accuracy, all traffic",
        Text(pct(s.aggregate_accuracy), style="bold"),
        "requests",
        str(s.requests),
    )

    quality = Table(title="per-tier quality (last 15 s)", expand=False)
    for col in ("version", "tier", "answers", "accuracy (truth)", "shadow disagreement"):
        quality.add_column(col, justify="right" if col not in ("version", "tier") else "left")
    for q in s.quality:
        breach = q.tier == story.CHEAP_TIER and (q.disagreement or 0) > story.DISAGREEMENT_MAX
        quality.add_row(
            q.version,
            q.tier,
            str(q.requests),
            pct(q.accuracy),
            Text(pct(q.disagreement), style="bold red" if breach else ""),
        )

    checks = Table(title=f"last analysis: {s.analysis or '-'}", expand=False)
    for col in ("objective", "tier", "verdict", "value", "bound"):
        checks.add_column(col)
    for c in s.checks:
        style = {"PASS": "green", "BREACH": "bold red"}.get(c.verdict, "yellow")
        checks.add_row(
            c.objective,
            c.tier or "all",
            Text(c.verdict, style=style),
            "-" if c.value is None else f"{c.value:.3f}",
            "-" if c.bound is None else f"{c.bound:.3f}",
        )

    decisions = Text()
    for d in tl.decisions[-6:]:
        decisions.append(f"{d.t:6.1f}s ", style="dim")
        decisions.append(f"{d.reason:<14} ", style="bold red" if d.warning else "bold")
        decisions.append(d.message[:110] + "\n")
    return Group(
        head,
        Panel(story_lines, title="the story"),
        Panel(traffic, title="traffic"),
        quality,
        checks,
        Panel(decisions or Text("-"), title="operator decisions (Kubernetes events)"),
    )


def line(s: Snapshot) -> str:
    """One progress line (no terminal): what changed is visible in CI logs."""
    canary = f" canary {s.canary} at {s.weight}%" if s.canary else ""
    cheap = [q for q in s.quality if q.tier == story.CHEAP_TIER and q.version == (s.canary or s.stable)]
    dis = pct(cheap[0].disagreement) if cheap else "-"
    return (
        f"[{s.t:6.1f}s] {s.chapter}: {s.phase}, stable {s.stable}{canary}; cost vs capable-only "
        f"{pct(s.cost_ratio)}, all-traffic accuracy {pct(s.aggregate_accuracy)}, "
        f"{story.CHEAP_TIER} disagreement {dis}; last analysis {s.analysis or '-'}"
    )
