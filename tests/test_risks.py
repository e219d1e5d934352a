"""Valid but dangerous policies are flagged: the ``Risky`` condition and a Warning Event (pure)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tierguard.kube.validate import validate_policy
from tierguard.rollout import conditions as cond
from tierguard.rollout.risks import RISKY, Risk, flag_risks, risk_event
from tierguard.rollout.status import PolicyStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)

SAFE: dict[str, Any] = {
    "tiers": [
        {"name": "mini", "baseUrl": "http://mini/v1", "model": "m", "confidence": {"threshold": 0.8}},
        {"name": "mid", "baseUrl": "http://mid/v1", "model": "m", "confidence": {"threshold": 0.7}},
        {"name": "big", "baseUrl": "http://big/v1", "model": "b"},
    ],
    "rollout": {"steps": [{"weight": 5}, {"weight": 50}]},
    "slos": [{"name": "q"}],
}


def slo(*tiers: str | None) -> dict[str, Any]:
    return {
        "spec": {
            "objectives": [
                {"name": f"o{i}", "signal": "error_rate", "max": 0.05, **({"tier": t} if t else {})}
                for i, t in enumerate(tiers)
            ]
        }
    }


def with_(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    out = copy.deepcopy(data or SAFE)
    node: Any = out
    *head, last = path.split(".")
    for key in head:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return out


def reasons(spec: dict[str, Any], q: dict[str, Any] | None = None) -> list[str]:
    result = validate_policy("chat", spec, {"q": q if q is not None else slo("mini")})
    assert result.ok, result.problem
    return [r.reason for r in result.risks]


@pytest.mark.parametrize(
    ("spec", "q", "expected"),
    [
        (SAFE, None, []),
        (with_("tiers.0.confidence.threshold", 0.0), None, ["CheapTierAcceptsEverything"]),
        (with_("tiers.1.confidence.threshold", 0), None, ["CheapTierAcceptsEverything"]),
        # a calibration whose lowest value already reaches the threshold accepts everything too
        (with_("tiers.0.confidence", {"threshold": 0.5, "calibration": [[0, 0.6], [1, 0.9]]}), None,
         ["CheapTierAcceptsEverything"]),
        # the last tier always answers: its threshold is not a risk
        (with_("tiers.2.confidence", {"threshold": 0.0}), None, []),
        (with_("rollout.steps", [{"weight": 100}]), None, ["FirstStepFullTraffic"]),
        (with_("rollout.steps", [{"weight": 99}, {"weight": 100}]), None, []),
        (SAFE, slo("big"), ["CheaperTiersUnwatched"]),
        (SAFE, slo("big", "mid"), []),
        (SAFE, slo(None), []),  # an objective without a tier watches every tier
        (with_("slos", []), None, []),
        (with_("rollout.steps", [{"weight": 100}], with_("tiers.0.confidence.threshold", 0)), slo("big"),
         ["CheapTierAcceptsEverything", "FirstStepFullTraffic", "CheaperTiersUnwatched"]),
    ],
)  # fmt: skip
def test_risks_of_valid_policies(spec: dict[str, Any], q: dict[str, Any] | None, expected: list[str]) -> None:
    assert reasons(spec, q) == expected


def test_messages_say_what_happens_and_what_to_change() -> None:
    result = validate_policy("chat", with_("tiers.0.confidence.threshold", 0), {"q": slo("mini")})
    (risk,) = result.risks
    assert "'mini' accepts every answer" in risk.message and "mid, big never answer" in risk.message
    assert "raise its threshold" in risk.message


def test_the_condition_and_event_follow_the_risks() -> None:
    clean = PolicyStatus()
    assert flag_risks(clean, [], NOW) is clean  # nothing to say: no condition at all
    risky = flag_risks(clean, [Risk("FirstStepFullTraffic", "first step 100%")], NOW, 3)
    c = cond.get_condition(risky.conditions, RISKY)
    assert c is not None and (c.status, c.reason, c.message) == (
        "True",
        "FirstStepFullTraffic",
        "first step 100%",
    )
    assert c.observed_generation == 3
    assert risk_event(clean, risky) == ("Warning", "RiskyPolicy", "first step 100%")
    # the same risk on the next tick: no second Event
    again = flag_risks(risky, [Risk("FirstStepFullTraffic", "first step 100%")], NOW + timedelta(minutes=1))
    assert risk_event(risky, again) is None
    fixed = flag_risks(again, [], NOW + timedelta(minutes=2))
    c = cond.get_condition(fixed.conditions, RISKY)
    assert c is not None and (c.status, c.reason) == ("False", "NoKnownRisk")
    assert risk_event(again, fixed) == (
        "Normal",
        "RiskCleared",
        "the policy no longer has a known risky setting",
    )
    assert risk_event(fixed, flag_risks(fixed, [], NOW)) is None
