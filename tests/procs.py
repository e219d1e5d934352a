"""Run real ``tierguard`` processes (simulator, proxy) on loopback ports for tests (the starters
live in :mod:`tierguard.localenv.services`, shared with ``tierguard demo``).

    from procs import start_proxy, start_sim, write_outcomes

    write_outcomes(tmp_path / "o.jsonl", rows)
    with start_sim(tmp_path / "o.jsonl", "cheap", latency_scale=0) as sim:
        httpx.post(f"{sim.url}/chat/completions", json=...)

Keyword flags become command-line options: ``latency_scale=0`` -> ``--latency-scale 0``;
``True`` -> a bare ``--flag``; ``False``/``None`` -> omitted. ``env={...}`` adds environment
variables. A process that fails to come up is stopped and its log is in the exception; a
``with`` block that fails prints the log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tierguard.localenv.services import (
    START_TIMEOUT,
    RunningProcess,
    ServiceStartError,
    child_env,
    flag_args,
    start_proxy,
    start_sim,
    start_tierguard,
)

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "REPO",
    "START_TIMEOUT",
    "RunningProcess",
    "ServiceStartError",
    "child_env",
    "flag_args",
    "start_proxy",
    "start_review",
    "start_sim",
    "write_outcomes",
]


def start_review(
    store: str,
    tokens_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    **flags: Any,
) -> RunningProcess:
    """``tierguard review serve --store URL --tokens FILE [flags]`` on a free port; waits for /healthz."""
    command = ["review", "serve", "--store", store, "--tokens", str(tokens_path), *flag_args(flags)]
    return start_tierguard("review", command, "/healthz", env=env, timeout=timeout, log_dir=log_dir)


def write_outcomes(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any] | str]) -> Path:
    """Write outcome rows as JSONL (a ``str`` row is written verbatim, e.g. a malformed line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for row in rows:
            line = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
            fh.write(line.rstrip("\n") + "\n")
    return p
