"""The demo's pure parts: the story's manifests, the verdict on what happened, the live view and
the HTML report; and its one-line errors (taken port, missing binaries) from the real command."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from procs import REPO
from tierguard.demo import report, story, view
from tierguard.demo.story import Phase, judge
from tierguard.demo.timeline import Check, Decision, Snapshot, TierQuality, Timeline
from tierguard.policy import CascadePolicySpec, QualitySLOSpec

CHEAP, CAPABLE = "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"

GOOD = {
    "v2": Phase("v2", [5, 10, 25, 50, 100], "Succeeded", "v2", [], True, 0.985),
    "v3": Phase("v3", [5, 10], "RolledBack", "v2", ["cheap-tier-quality/mini"], True, 0.975),
}


def test_manifests_are_valid_and_the_versions_differ_only_in_the_threshold() -> None:
    specs = {v: story.policy_spec(v, CHEAP, CAPABLE, "4s") for v in ("v1", "v2", "v3")}
    for spec in specs.values():
        CascadePolicySpec.model_validate(spec)
    QualitySLOSpec.model_validate(story.slo_manifest()["spec"])
    thresholds = [s["tiers"][0]["confidence"]["threshold"] for s in specs.values()]
    assert thresholds == [0.95, 0.85, 0.60]
    names = story.revision_names(CHEAP, CAPABLE, "4s")
    assert sorted(names.values()) == ["v1", "v2", "v3"]
    assert story.revision_names(CHEAP, CAPABLE, "4s") == names


def test_judge_accepts_the_story() -> None:
    assert judge(GOOD) == []


@pytest.mark.parametrize(
    ("version", "change", "needle"),
    [
        ("v2", {"weights": [5, 25, 100]}, "went through weights"),
        ("v2", {"final_phase": "RolledBack", "stable_after": "v1"}, "not promoted"),
        ("v3", {"final_phase": "Succeeded", "stable_after": "v3"}, "not RolledBack"),
        ("v3", {"breached": ["errors/mini"]}, "did not breach cheap-tier-quality/mini"),
        ("v3", {"passed_aggregate": False}, "aggregate checks"),
        ("v3", {"accuracy_all_traffic": 0.9}, "below 0.95"),
        ("v3", {"accuracy_all_traffic": None}, "was None"),
    ],
)
def test_judge_names_what_did_not_happen(version: str, change: dict[str, object], needle: str) -> None:
    phases = dict(GOOD)
    phases[version] = dataclasses.replace(phases[version], **change)  # type: ignore[arg-type]
    problems = judge(phases)
    assert len(problems) >= 1 and any(needle in p for p in problems), problems


def test_judge_without_a_chapter() -> None:
    assert judge({}) == ["v2 was never rolled out"]
    assert judge({"v2": GOOD["v2"]}) == ["v3 was never rolled out"]


def test_breached_and_aggregate_checks() -> None:
    checks = [
        {"objective": "cheap-tier-quality", "tier": "mini", "verdict": "BREACH"},
        {"objective": "errors", "tier": "mini", "verdict": "PASS"},
        {"objective": "errors", "tier": "large", "verdict": "NO_DATA"},
    ]
    assert story.breached_checks(checks) == ["cheap-tier-quality/mini"]
    assert story.aggregate_green(checks)
    assert not story.aggregate_green([*checks, {"objective": "errors", "tier": "large", "verdict": "BREACH"}])


def timeline() -> Timeline:
    tl = Timeline()
    for i in range(40):
        chapter = "v1" if i < 10 else "v2" if i < 30 else "v3"
        canary = None if chapter == "v1" else chapter
        tl.snapshots.append(
            Snapshot(
                t=float(i),
                chapter=chapter,
                phase="Progressing",
                stable="v1" if i < 30 else "v2",
                canary=canary,
                weight=[5, 10, 25, 50, 100][i % 5] if canary else 0,
                cost_ratio=0.4,
                escalation_rate=0.5,
                aggregate_accuracy=0.98,
                quality=(TierQuality(chapter, "mini", 30, 0.99, 0.02 if chapter != "v3" else 0.3),),
                analysis="Pass",
                checks=(Check("cheap-tier-quality", "mini", "BREACH", 0.3, 0.1),),
                requests=100 * i,
            )
        )
    tl.decisions.append(Decision(35.0, "RolledBack", "rolled back <v3>: cheap-tier-quality breached", True))
    tl.notes.append((1.0, "v1 applied"))
    return tl


def test_report_is_offline_and_says_what_happened() -> None:
    html = report.render(timeline(), GOOD, [], 97.0, "synthetic customer-support workload", 7)
    assert html.startswith("<!doctype html>")
    assert "<script" not in html.lower() and "@import" not in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert 'id="verdict"' in html and "happened as stated" in html
    assert html.count("<svg") == 4 and "&lt;v3&gt;" in html  # messages are escaped
    assert "synthetic" in html and "Wall time 97 s" in html
    bad = report.render(timeline(), GOOD, ["v3 ended Succeeded, not RolledBack"], 97.0, "w", 7)
    assert "did not happen as stated" in bad and "not RolledBack" in bad


def test_live_view_and_progress_line_render() -> None:
    tl = timeline()
    console = Console(record=True, width=140, color_system=None)
    console.print(view.render(tl.snapshots[-1], tl, "synthetic customer-support workload"))
    text = console.export_text()
    for needle in ("chapter v3", "cost vs capable-only", "40.0%", "BREACH", "RolledBack", "30.0%"):
        assert needle in text, needle
    line = view.line(tl.snapshots[-1])
    assert "canary v3" in line and "mini disagreement 30.0%" in line


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierguard", "demo", "--plain", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator"), **(env or {})},
    )  # fmt: skip


def test_a_taken_port_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = demo("--port", str(port))
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"tierguard demo: error: port {port} is taken; pass --port N (0 picks a free port)"
    )


def test_missing_binaries_are_one_line(tmp_path: Path) -> None:
    res = demo("--port", "0", "--no-build", env={"TIERGUARD_BIN_DIR": str(tmp_path)})
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        "tierguard demo: error: missing etcd, kube-apiserver: run 'bash tests/k8senv/build.sh' (or .ci/install.sh)"
    ], res.stderr
    res = demo("--port", "0", env={"TIERGUARD_PROMETHEUS": str(tmp_path / "nope")})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("tierguard demo: error: Prometheus server binary not found")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_feedback_is_thumbs_down_exactly_on_wrong_answers_for_a_quarter_of_them() -> None:
    from tierguard.demo import truth, workload

    rows = list(workload.generate(rows=2000))
    tally = truth.Tally(rows)
    ratings = {}
    for i in range(len(rows)):
        for tier, model in truth.MODEL_OF_TIER.items():
            r = tally.rating(i, {"x-tierguard-tier": tier})
            if r is not None:
                assert r == ("up" if rows[i]["models"][model]["correct"] else "down")
                ratings[(i, tier)] = r
    assert 0.2 < len(ratings) / (2 * len(rows)) < 0.3
    assert tally.rating(0, {}) is None and tally.rating(0, {"x-tierguard-tier": "other"}) is None
    tally.record(3, 200, {"x-tierguard-tier": "mini", "x-tierguard-revision": "r1"})
    tally.record(4, 500, {})
    assert tally.errors == 1 and [a.revision for a in tally.between(0.0)] == ["r1"]
