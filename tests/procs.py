"""Run real ``tierguard`` processes (simulator, proxy) on loopback ports for tests.

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
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
_PORT_RETRIES = 3


class RunningProcess:
    """A started ``tierguard`` sub-command listening on ``127.0.0.1:port``."""

    def __init__(self, name: str, proc: ManagedProcess, host: str, port: int) -> None:
        self.name = name
        self.proc = proc
        self.host = host
        self.port = port

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (admin, health and metrics endpoints hang off this)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    def alive(self) -> bool:
        return self.proc.alive()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def log_text(self) -> str:
        return self.proc.log_text()

    def dump_log(self, lines: int = 80) -> None:
        print(f"----- {self.proc.describe()} -----\n{self.proc.tail(lines)}", file=sys.stderr)

    def stop(self, timeout: float = 10.0) -> None:
        self.proc.stop(timeout=timeout)

    def __enter__(self) -> RunningProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.dump_log()
        self.stop()

    def __repr__(self) -> str:
        return f"<{self.name} {self.base} pid={self.pid}>"


def flag_args(flags: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in flags.items():
        opt = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(opt)
        else:
            out += [opt, str(value)]
    return out


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the worktree's ``operator/`` first on ``PYTHONPATH`` (not whatever
    ``tierguard`` happens to be installed), for every ``python -m tierguard`` a test starts."""
    env = dict(os.environ)
    paths = [str(REPO / "operator"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _start(
    name: str,
    command: list[str],
    ready_path: str,
    env: Mapping[str, str] | None,
    timeout: float,
    log_dir: str | os.PathLike[str] | None,
) -> RunningProcess:
    host = "127.0.0.1"
    last_log = ""
    for _attempt in range(_PORT_RETRIES):
        port = free_port(host)
        fd, log_name = tempfile.mkstemp(prefix=f"tierguard-{name}-{port}-", suffix=".log", dir=log_dir)
        os.close(fd)
        args = [sys.executable, "-m", "tierguard", *command, "--host", host, "--port", str(port)]
        proc = ManagedProcess(name, args, Path(log_name), env=child_env(env), cwd=REPO).start()
        running = RunningProcess(name, proc, host, port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.alive():
            if _ready(running.base + ready_path):
                return running
            time.sleep(0.05)
        alive = proc.alive()
        proc.stop(timeout=5)
        last_log = proc.log_text()
        if not alive and "address already in use" in last_log.lower():
            continue  # another process took the port between choosing and binding it
        state = f"not ready after {timeout:.0f}s" if alive else f"exited with {proc.returncode}"
        raise RuntimeError(f"tierguard {name} {state} (log {log_name}):\n{last_log}")
    raise RuntimeError(f"tierguard {name}: no free port after {_PORT_RETRIES} attempts:\n{last_log}")


def start_sim(
    data_path: str | os.PathLike[str],
    model: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    **flags: Any,
) -> RunningProcess:
    """``tierguard sim --data DATA --model MODEL [flags]`` on a free port; waits for /healthz."""
    command = ["sim", "--data", str(data_path), "--model", model, *flag_args(flags)]
    return _start("sim", command, "/healthz", env, timeout, log_dir)


def start_proxy(
    policy_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    **flags: Any,
) -> RunningProcess:
    """``tierguard proxy --policy FILE [flags]`` on a free port; waits for /readyz to answer 200."""
    command = ["proxy", "--policy", str(policy_path), *flag_args(flags)]
    return _start("proxy", command, "/readyz", env, timeout, log_dir)


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
    return _start("review", command, "/healthz", env, timeout, log_dir)


def write_outcomes(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any] | str]) -> Path:
    """Write outcome rows as JSONL (a ``str`` row is written verbatim, e.g. a malformed line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for row in rows:
            line = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
            fh.write(line.rstrip("\n") + "\n")
    return p
