"""The demo's story, as data and as a verdict (pure: no I/O).

- **v1** serves: a conservative threshold (0.95) on the cheap tier; promoted by hand at once.
- **v2** (better threshold, 0.85) rolls out 5 -> 10 -> 25 -> 50 -> 100 and is promoted.
- **v3** ("route the easy-looking queries cheap", threshold 0.6) lets the hidden long tail reach the
  cheap tier; the per-tier SLO on the cheap tier's shadow disagreement with the capable tier is
  breached while the aggregate stays green, and the operator rolls it back on its own.

:func:`judge` checks that this is what happened, from what the demo recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..policy import CascadePolicySpec, Revision
from .workload import CAPABLE_MODEL, CHEAP_MODEL, PRICES

NAMESPACE = "demo"
POLICY = "support"
SLO = "support-quality"
CHEAP_TIER = "mini"
CAPABLE_TIER = "large"
STEPS = (5, 10, 25, 50, 100)
THRESHOLDS: dict[str, float] = {"v1": 0.95, "v2": 0.85, "v3": 0.60}
DESCRIPTIONS: dict[str, str] = {
    "v1": "conservative threshold 0.95: the cheap tier answers only its surest queries",
    "v2": "better threshold 0.85: every easy query goes cheap, the hidden tail still escalates",
    "v3": "aggressive threshold 0.60: route the easy-looking queries cheap (the hidden tail too)",
}
DISAGREEMENT_MAX = 0.10  # the per-tier SLO: the cheap tier disagrees with the capable one on <= 10%
ERROR_RATE_MAX = 0.05
AGGREGATE_ACCURACY_MIN = 0.95  # all traffic, ground truth: what an aggregate dashboard would show


def policy_spec(
    version: str, cheap_url: str, capable_url: str, interval: str, reference: list[float] | None = None
) -> dict[str, Any]:
    """The CascadePolicy spec of one version (``v1``/``v2``/``v3``), as applied to the cluster.
    ``reference``: the cheap tier's confidence distribution, for the drift (PSI) metric."""
    confidence: dict[str, Any] = {"threshold": THRESHOLDS[version]}
    if reference is not None:
        confidence["reference"] = reference
    return {
        "tiers": [
            {
                "name": CHEAP_TIER,
                "baseUrl": cheap_url,
                "model": CHEAP_MODEL,
                "priceInputPerMillion": PRICES[CHEAP_MODEL][0],
                "priceOutputPerMillion": PRICES[CHEAP_MODEL][1],
                "timeoutSeconds": 10,
                "confidence": confidence,
            },
            {
                "name": CAPABLE_TIER,
                "baseUrl": capable_url,
                "model": CAPABLE_MODEL,
                "priceInputPerMillion": PRICES[CAPABLE_MODEL][0],
                "priceOutputPerMillion": PRICES[CAPABLE_MODEL][1],
                "timeoutSeconds": 10,
            },
        ],
        "confidence": {"method": "logprob", "aggregate": "quantile", "quantile": 0.1},
        "rollout": {
            "steps": [{"weight": w} for w in STEPS],
            "interval": interval,
            "failureThreshold": 2,
            "minSamples": 5,
        },
        "slos": [{"name": SLO}],
        # every answer the cheap tier gives is re-asked to the capable tier: the per-tier quality signal
        "proxy": {"replicas": 2, "shadowRate": 1.0},
    }


def policy_manifest(
    version: str, cheap_url: str, capable_url: str, interval: str, reference: list[float] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": policy_spec(version, cheap_url, capable_url, interval, reference),
    }


def slo_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "QualitySLO",
        "metadata": {"name": SLO, "namespace": NAMESPACE},
        "spec": {
            "objectives": [
                {
                    "name": "cheap-tier-quality",
                    "tier": CHEAP_TIER,
                    "signal": "shadow_disagreement",
                    "max": DISAGREEMENT_MAX,
                },
                {"name": "errors", "signal": "error_rate", "max": ERROR_RATE_MAX},
            ]
        },
    }


def revision_names(
    cheap_url: str, capable_url: str, interval: str, reference: list[float] | None = None
) -> dict[str, str]:
    """Revision name (the cascade's content hash, as the operator names it) -> ``v1``/``v2``/``v3``."""
    out = {}
    for version in THRESHOLDS:
        spec = CascadePolicySpec.model_validate(
            policy_spec(version, cheap_url, capable_url, interval, reference)
        )
        out[Revision.of(spec.cascade()).name] = version  # how the operator names a revision
    return out


# --- what happened ----------------------------------------------------------------------------


@dataclass
class Phase:
    """One version's part of the story, as recorded."""

    version: str
    weights: list[int] = field(default_factory=list)  # canary weights seen while it was the canary
    final_phase: str = ""
    stable_after: str | None = None  # the version stable at the end
    breached: list[str] = field(default_factory=list)  # "objective/tier" of breaching checks
    passed_aggregate: bool = True  # every revision-wide or error check passed in the last analysis
    accuracy_all_traffic: float | None = None  # ground truth, while this version was the canary


def judge(phases: Mapping[str, Phase]) -> list[str]:
    """What in the story did not happen as stated (empty: it all did)."""
    problems: list[str] = []
    v2, v3 = phases.get("v2"), phases.get("v3")
    if v2 is None:
        return ["v2 was never rolled out"]
    if v2.weights != list(STEPS):
        problems.append(f"v2 went through weights {v2.weights}, not {list(STEPS)}")
    if v2.final_phase != "Succeeded" or v2.stable_after != "v2":
        problems.append(f"v2 ended {v2.final_phase or 'nowhere'} with {v2.stable_after} stable, not promoted")
    if v3 is None:
        return [*problems, "v3 was never rolled out"]
    if v3.final_phase != "RolledBack":
        problems.append(f"v3 ended {v3.final_phase or 'nowhere'}, not RolledBack")
    if v3.stable_after != "v2":
        problems.append(f"after v3, {v3.stable_after} is stable, not v2")
    wanted = f"cheap-tier-quality/{CHEAP_TIER}"
    if wanted not in v3.breached:
        problems.append(f"v3's rollback did not breach {wanted} (breached: {v3.breached or 'nothing'})")
    if not v3.passed_aggregate:
        problems.append("v3's aggregate checks did not stay green")
    acc = v3.accuracy_all_traffic
    if acc is None or acc < AGGREGATE_ACCURACY_MIN:
        problems.append(f"the accuracy of all traffic during v3 was {acc}, below {AGGREGATE_ACCURACY_MIN}")
    return problems


def breached_checks(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{c.get('objective')}/{c.get('tier') or 'all'}" for c in checks if c.get("verdict") == "BREACH"]


def aggregate_green(checks: Sequence[Mapping[str, Any]]) -> bool:
    """The checks other than the per-tier quality objective all passed (or had no data yet)."""
    return all(
        c.get("verdict") in ("PASS", "NO_DATA") for c in checks if c.get("objective") != "cheap-tier-quality"
    )
