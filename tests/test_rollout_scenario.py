"""replay's rollout scenario: a policy rolled out on replayed traffic through the operator's own
observe() / decide() / next_status(), fed by the fake metrics provider."""

import json
import random

import pytest

from test_replay import POLICY, make_rows, tierguard, write_jsonl
from tierguard.outcomes import Row
from tierguard.policy import parse_policy_spec
from tierguard.replay.rollout_sim import disagreement_slo, simulate

SPEC = parse_policy_spec(
    {
        "tiers": [
            {
                "name": "cheap",
                "baseUrl": "http://127.0.0.1:9101/v1",
                "model": "cheap",
                "confidence": {"threshold": 0.5},
            },
            {"name": "capable", "baseUrl": "http://127.0.0.1:9102/v1", "model": "capable"},
        ]
    }
)


def _rows(n, disagree, seed):
    """Half the queries are confident (the cheap tier answers them); on those the cheap answer
    differs from the capable tier's with probability ``disagree``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sure = i % 2 == 0
        differs = sure and rng.random() < disagree
        rows.append(
            Row(
                f"q{i}",
                "b",
                "test",
                "c",
                "p",
                (0.99 if sure else 0.1, 0.9),
                (not differs, True),
                (1.0, 10.0),
                ("B" if differs else "A", "A"),
            )
        )
    return rows


def test_healthy_policy_is_promoted_and_a_worse_one_rolled_back_before_full_traffic():
    train = _rows(400, 0.02, 1)
    slo = disagreement_slo(SPEC, train, 0.01, 4000, 0.2)
    (obj,) = slo.objectives
    assert obj.signal == "shadow_disagreement" and obj.tier == "cheap" and 0.02 < obj.max < 0.2
    kw = {"requests_per_interval": 4000, "shadow_rate": 0.2}
    good = [simulate(SPEC, _rows(2000, 0.02, 2), slo, seed=s, **kw) for s in range(10)]
    assert all(o.result == "promoted" for o in good), [o.message for o in good]
    assert [s["weight"] for s in good[0].steps] == [5, 10, 25, 50, 100]
    assert good[0].requests == 5 * 4000 and 0 < good[0].canary_requests < good[0].requests
    bad = [simulate(SPEC, _rows(2000, 0.3, 3), slo, seed=s, **kw) for s in range(10)]
    assert all(o.result == "rolled back" and o.final_weight < 100 for o in bad), [o.message for o in bad]
    assert "shadow_disagreement" not in bad[0].message or "disagreement-cheap" in bad[0].message


@pytest.mark.slow
def test_replay_rollout_scenario_end_to_end(tmp_path):
    data = write_jsonl(tmp_path / "o.jsonl", make_rows(900, seed=4))
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    out = tmp_path / "r"
    proc = tierguard(
        "replay", "--data", data, "--policy", policy, "--out", out, "--strategies", "cascade",
        "--scenario", "rollout", "--runs", "2", "--rollout-resplits", "3", "--max-accuracy-drop", "0.05",
        "--requests-per-interval", "4000", "--quiet",
    )  # fmt: skip
    ro = json.loads((out / "report.json").read_text())["rollout"]
    labels = [p["policy"] for p in ro["policies"]]
    assert labels == ["certified", "selected on train (no guarantee)"]
    for p in ro["policies"]:
        assert p["promoted"] + p["rolled_back"] + p["undecided"] == 2
    assert ro["resplits"]["splits"] == 3
    assert "rollout on test traffic" in proc.stdout
    assert "Rollout" in (out / "report.html").read_text()
