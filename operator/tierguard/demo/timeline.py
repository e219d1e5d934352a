"""What the demo shows and reports: one snapshot per second, and the operator's decisions."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TierQuality:
    version: str
    tier: str
    requests: int  # answered by this tier of this version in the window
    accuracy: float | None  # ground truth
    disagreement: float | None  # shadow scoring, from Prometheus (None: no shadow samples)


@dataclass(frozen=True)
class Check:
    objective: str
    tier: str | None
    verdict: str
    value: float | None
    bound: float | None


@dataclass(frozen=True)
class Snapshot:
    t: float  # seconds since the demo started
    chapter: str  # "setup", "v1", "v2", "v3", "done"
    phase: str
    stable: str  # version label (v1/v2/v3) or a revision name
    canary: str | None
    weight: int
    cost_ratio: float | None  # cost / capable-only counterfactual cost, in the window
    escalation_rate: float | None
    aggregate_accuracy: float | None  # all traffic, ground truth, in the window
    quality: tuple[TierQuality, ...] = ()
    analysis: str = ""  # the last analysis' result
    checks: tuple[Check, ...] = ()
    requests: int = 0


@dataclass(frozen=True)
class Decision:
    t: float
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class PanelResult:
    """One Grafana dashboard panel's query, run over the demo against its Prometheus."""

    title: str
    unit: str
    query: str
    series: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()  # (legend, [(t, value)])
    error: str | None = None


@dataclass
class Timeline:
    snapshots: list[Snapshot] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)  # (t, what the demo did)
    panels: list[PanelResult] = field(default_factory=list)
