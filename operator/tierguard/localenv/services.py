"""Run ``tierguard`` sub-commands (simulator, proxy, operator) as child processes on loopback.

Used by ``tierguard demo`` and by the tests (``tests/procs.py``). A process is started with
``python -m tierguard COMMAND ... --host 127.0.0.1 --port PORT`` and is ready when ``ready_path``
answers 200. Keyword flags become command-line options: ``latency_scale=0`` -> ``--latency-scale
0``; ``True`` -> a bare ``--flag``; ``False``/``None`` -> omitted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import free_port
from .process import ManagedProcess

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the directory holding the tierguard package
START_TIMEOUT = 30.0
_PORT_RETRIES = 3


class ServiceStartError(RuntimeError):
    """A service that did not come up; the message carries its log."""


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
    """This environment, with this ``tierguard`` package first on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(PACKAGE_PARENT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_tierguard(
    name: str,
    command: Sequence[str],
    ready_path: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    cwd: Path | None = None,
) -> RunningProcess:
    """``python -m tierguard COMMAND --host 127.0.0.1 --port PORT`` (a free port unless ``port``);
    waits until ``ready_path`` answers 200. A free port lost to a race is retried."""
    host = "127.0.0.1"
    last_log = ""
    for _attempt in range(_PORT_RETRIES if port is None else 1):
        chosen = port if port is not None else free_port(host)
        fd, log_name = tempfile.mkstemp(prefix=f"tierguard-{name}-{chosen}-", suffix=".log", dir=log_dir)
        os.close(fd)
        args = [sys.executable, "-m", "tierguard", *command, "--host", host, "--port", str(chosen)]
        proc = ManagedProcess(name, args, Path(log_name), env=child_env(env), cwd=cwd).start()
        running = RunningProcess(name, proc, host, chosen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.alive():
            if http_ok(running.base + ready_path):
                return running
            time.sleep(0.05)
        alive = proc.alive()
        proc.stop(timeout=5)
        last_log = proc.log_text()
        if not alive and "address already in use" in last_log.lower() and port is None:
            continue  # another process took the port between choosing and binding it
        state = f"not ready after {timeout:.0f}s" if alive else f"exited with {proc.returncode}"
        raise ServiceStartError(f"tierguard {name} {state} (log {log_name}):\n{last_log}")
    raise ServiceStartError(f"tierguard {name}: no free port after {_PORT_RETRIES} attempts:\n{last_log}")


def start_sim(
    data_path: str | os.PathLike[str],
    model: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    **flags: Any,
) -> RunningProcess:
    """``tierguard sim --data DATA --model MODEL [flags]``; waits for /healthz."""
    command = ["sim", "--data", str(data_path), "--model", model, *flag_args(flags)]
    return start_tierguard("sim", command, "/healthz", env=env, timeout=timeout, log_dir=log_dir, port=port)


def start_proxy(
    policy_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    log_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    **flags: Any,
) -> RunningProcess:
    """``tierguard proxy --policy FILE [flags]``; waits for /readyz to answer 200."""
    command = ["proxy", "--policy", str(policy_path), *flag_args(flags)]
    return start_tierguard("proxy", command, "/readyz", env=env, timeout=timeout, log_dir=log_dir, port=port)


def start_operator(
    kubeconfig: str | os.PathLike[str],
    namespace: str,
    log_path: Path,
    *,
    prometheus_url: str | None = None,
    verbose: bool = True,
    timeout: float = 60.0,
) -> ManagedProcess:
    """``tierguard operator --standalone -n NAMESPACE`` with a liveness endpoint; returns once it
    answers."""
    port = free_port()
    args = [
        sys.executable, "-m", "tierguard", "operator", "--namespace", namespace, "--standalone",
        "--kubeconfig", str(kubeconfig), "--liveness", f"http://127.0.0.1:{port}/healthz",
    ]  # fmt: skip
    if verbose:
        args.append("--verbose")
    if prometheus_url:
        args += ["--prometheus-url", prometheus_url]
    proc = ManagedProcess("tierguard-operator", args, log_path, env=child_env()).start()
    deadline = time.monotonic() + timeout
    while not http_ok(f"http://127.0.0.1:{port}/healthz"):
        if not proc.alive():
            raise ServiceStartError(f"the operator exited with {proc.returncode}:\n{proc.tail(40)}")
        if time.monotonic() > deadline:
            proc.stop()
            raise ServiceStartError(f"the operator was not live after {timeout:.0f}s:\n{proc.tail(40)}")
        time.sleep(0.1)
    return proc
