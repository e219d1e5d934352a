"""The synthetic customer-support workload: deterministic, in the outcomes format, labelled
synthetic, with the shape the demo's story needs, and served by a real ``tierguard sim``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import REPO, start_sim
from tierguard.confidence import aggregate
from tierguard.demo import workload
from tierguard.demo.workload import CAPABLE_MODEL, CHEAP_MODEL
from tierguard.outcomes import load_outcomes

ROWS = list(workload.generate())


def conf(row: dict[str, Any], model: str) -> float:
    return math.exp(row["models"][model]["conf_logprob"])


def cheap_answered(threshold: float) -> list[dict[str, Any]]:
    return [r for r in ROWS if conf(r, CHEAP_MODEL) >= threshold]


def wrong_share(rows: list[dict[str, Any]]) -> float:
    return sum(not r["models"][CHEAP_MODEL]["correct"] for r in rows) / len(rows)


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows() -> None:
    assert list(workload.generate(seed=7, rows=300)) == ROWS[:300]
    other = list(workload.generate(seed=8, rows=300))
    assert [r["user_prompt"] for r in other] != [r["user_prompt"] for r in ROWS[:300]]


def test_written_file_is_byte_identical_and_loads_strictly(tmp_path: Path) -> None:
    a = workload.write(tmp_path / "a.jsonl", seed=3, rows=400)
    b = workload.write(tmp_path / "b.jsonl", seed=3, rows=400)
    assert a.read_bytes() == b.read_bytes()
    outcomes = load_outcomes(a, strict=True)
    assert len(outcomes.records) == 400 and not outcomes.skipped
    assert set(outcomes.models) == {CHEAP_MODEL, CAPABLE_MODEL}


def test_every_row_is_labelled_synthetic_and_prompts_are_distinct() -> None:
    assert all(r["synthetic"] is True for r in ROWS)
    assert {r["benchmark"] for r in ROWS} == {"synthetic-customer-support"}
    assert {r["conf_kind"] for r in ROWS} == {"synthetic"}
    assert len({r["user_prompt"] for r in ROWS}) == len(ROWS)
    assert Counter(r["split"] for r in ROWS) == {"train": 1000, "test": 1000}


def test_kinds_and_the_hidden_tail() -> None:
    kinds = Counter(r["category"].split(":")[0] for r in ROWS)
    assert set(kinds) == {"centre", "tail", "hard"}
    assert all(kinds[k] >= 0.15 * len(ROWS) for k in kinds), kinds
    tail = [r for r in ROWS if r["category"].startswith("tail:")]
    causes = Counter(r["category"] for r in tail)
    assert set(causes) == {
        "tail:charge_routine",
        "tail:fraud_report",
        "tail:reconciliation_delay",
        "tail:billing_cycle_change",
    }
    # an easy surface form: every tail prompt asks about a charge, whatever the cause
    assert all("charge" in r["user_prompt"] or "payment" in r["user_prompt"] for r in tail)
    # the cheap model answers "routine" every time: right only when it is routine
    for r in tail:
        assert r["models"][CHEAP_MODEL]["correct"] == (r["category"] == "tail:charge_routine")
        assert "subscription" in r["models"][CHEAP_MODEL]["answer"]


def test_the_story_shape_cheap_right_on_the_centre_wrong_on_the_tail_capable_right_on_both() -> None:
    centre = [r for r in ROWS if r["category"].startswith("centre:")]
    tail = [r for r in ROWS if r["category"].startswith("tail:")]
    assert wrong_share(centre) < 0.03
    assert min(conf(r, CHEAP_MODEL) for r in centre) >= 0.85
    assert 0.6 <= wrong_share(tail) <= 0.9
    assert all(0.6 <= conf(r, CHEAP_MODEL) < 0.85 for r in tail)
    capable_wrong = sum(not r["models"][CAPABLE_MODEL]["correct"] for r in ROWS) / len(ROWS)
    assert capable_wrong < 0.03
    # thresholds of the demo's revisions: 0.85 keeps the tail away, 0.6 lets it through
    assert wrong_share(cheap_answered(0.85)) < 0.03
    assert wrong_share(cheap_answered(0.6)) > 0.15
    assert len(cheap_answered(0.95)) < len(cheap_answered(0.85)) < len(cheap_answered(0.6))


def test_a_wrong_answer_differs_from_the_capable_answer_so_shadow_scoring_sees_it() -> None:
    for r in ROWS:
        cheap, capable = r["models"][CHEAP_MODEL], r["models"][CAPABLE_MODEL]
        if cheap["correct"] and capable["correct"]:
            assert cheap["answer"] == capable["answer"] == r["reference"]
        elif capable["correct"]:
            assert cheap["answer"] != capable["answer"]


def test_costs_follow_the_prices() -> None:
    r = ROWS[0]
    for model, (p_in, p_out) in workload.PRICES.items():
        o = r["models"][model]
        assert o["cost_usd"] == pytest.approx((o["tokens_in"] * p_in + o["tokens_out"] * p_out) / 1e6)
    cheap = sum(r["models"][CHEAP_MODEL]["cost_usd"] for r in ROWS)
    capable = sum(r["models"][CAPABLE_MODEL]["cost_usd"] for r in ROWS)
    assert capable > 10 * cheap


def test_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(workload.generate(rows=0))


def test_demo_write_data_command_and_sim_serve_it(tmp_path: Path) -> None:
    out = tmp_path / "support.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "tierguard", "demo", "--write-data", str(out), "--seed", "5", "--rows", "200"],
        capture_output=True, text=True, cwd=REPO, check=False,
        env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "200 synthetic rows" in res.stdout
    assert out.read_bytes() == workload.write(tmp_path / "again.jsonl", seed=5, rows=200).read_bytes()
    row = json.loads(out.read_text().splitlines()[17])
    with start_sim(out, CHEAP_MODEL, latency_scale=0, log_dir=tmp_path) as sim:
        body = {
            "model": CHEAP_MODEL,
            "messages": [
                {"role": "system", "content": row["system_prompt"]},
                {"role": "user", "content": row["user_prompt"]},
            ],
            "logprobs": True,
        }
        reply = httpx.post(f"{sim.url}/chat/completions", json=body, timeout=10).json()
    choice = reply["choices"][0]
    assert choice["message"]["content"] == row["models"][CHEAP_MODEL]["answer"]
    lps = [t["logprob"] for t in choice["logprobs"]["content"]]
    assert aggregate(lps, "min") == pytest.approx(conf(row, CHEAP_MODEL), rel=1e-6)


def test_the_readme_prompts_are_recorded_and_route_as_the_readme_says() -> None:
    readme = (REPO / "README.md").read_text() + (REPO / "examples" / "run-local.sh").read_text()
    by_prompt = {r["user_prompt"]: r for r in ROWS}
    easy, tail = (
        by_prompt["Where is my order #227588?"],
        by_prompt["Where is this charge from? EUR 153.53 on 2026-03-18"],
    )
    assert "Where is my order #227588?" in readme and "EUR 153.53 on 2026-03-18" in readme
    # examples/local-policy.yaml accepts the cheap tier at 0.80
    assert conf(easy, CHEAP_MODEL) >= 0.80 > conf(tail, CHEAP_MODEL)
