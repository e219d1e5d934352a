"""The single `tierguard` command: every listed sub-command exists and errors are clean."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tierguard.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_is_complete(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.configure) and callable(module.run)


def test_usage_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


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
    r = subprocess.run([sys.executable, "-m", "tierguard", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "/nonexistent" in r.stderr
    assert "Traceback" not in r.stderr
