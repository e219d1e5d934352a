"""The single `tierguard` command: every listed sub-command exists and errors are clean."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from procs import REPO, child_env
from tierguard.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_is_complete(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.configure) and callable(module.run)


# Written out by hand, not derived from COMMANDS: a command dropped from (or added to) the table
# must show up here as a failing test, and in the docs.
DOCUMENTED = {
    "operator", "proxy", "sim", "replay", "calibrate", "crds", "promote", "abort", "resume", "status",
    "demo", "workload", "review", "tune",
}  # fmt: skip


def listed_commands(usage: str) -> set[str]:
    """The command names in the ``commands:`` block of the usage text."""
    block = usage.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in block.splitlines() if line.strip()}


def test_usage_lists_the_documented_commands():
    r = subprocess.run(
        [sys.executable, "-m", "tierguard"], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert r.returncode == 0, r.stderr
    assert listed_commands(r.stdout) == DOCUMENTED


def test_every_command_has_working_help(capsys):
    for name in sorted(DOCUMENTED):
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0, name
        assert f"usage: tierguard {name}" in capsys.readouterr().out


def test_every_command_is_in_the_docs():
    docs = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    missing = sorted(n for n in DOCUMENTED if f"tierguard {n}" not in docs)
    assert not missing, f"commands not mentioned as `tierguard NAME` in README.md or docs/: {missing}"


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [
            "replay",
            "--data",
            "/nonexistent.jsonl",
            "--policy",
            "examples/local-policy.yaml",
            "--out",
            "/tmp/x",
        ],
        ["proxy", "--policy", "/nonexistent.yaml"],
        ["sim", "--data", "/nonexistent.jsonl", "--model", "m"],
    ],
)
def test_missing_files_are_reported_without_traceback(argv):
    r = subprocess.run(
        [sys.executable, "-m", "tierguard", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert r.returncode == 2, r.stderr
    assert "/nonexistent" in r.stderr
    assert "Traceback" not in r.stderr
