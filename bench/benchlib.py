"""Shared plumbing for the benchmarks in ``bench/``: processes pinned to CPUs, wrk runs, machine facts.

Benchmarks run real processes on loopback: ``tierguard sim``, ``tierguard proxy``, LiteLLM's
proxy and ``wrk``. Every process is started here, in a session of its own, and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "zellinger_llm_cascades" / "cascade_outcomes.jsonl"
WRK_SCRIPT = BENCH / "wrk_post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark that cannot run (missing tool, process that does not come up): printed, no traceback."""


# --- machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine so far (all CPUs, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    parts = stat[stat.rindex(")") + 2 :].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def require_tool(name: str, hint: str) -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    raise BenchError(f"{name} is not installed ({hint})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_prefix(cpus: str | None, nice: int = 0) -> list[str]:
    """``taskset -c CPUS`` (and ``nice -n N``) in front of a command; nothing when not asked."""
    out: list[str] = []
    if cpus:
        out += ["taskset", "-c", cpus]
    if nice:
        out += ["nice", "-n", str(nice)]
    return out


# --- processes ----------------------------------------------------------------------------------


class Proc:
    """A process started for a benchmark, in its own session; logs to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(
                    f"{self.name} exited with {self.popen.returncode} before it was ready "
                    f"(log {self.log_path}):\n{self.tail()}"
                )
            if http_ok(url):
                return
            time.sleep(0.1)
        self.stop()
        raise BenchError(
            f"{self.name} not ready at {url} after {timeout:.0f}s (log {self.log_path}):\n{self.tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)  # the session this process leads
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def post_json(url: str, body: Mapping[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
    """POST JSON; return (status, headers in lower case, decoded body)."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
            headers = {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
        headers = {k.lower(): v for k, v in err.headers.items()}
    try:
        decoded: Any = json.loads(raw)
    except ValueError:
        decoded = raw.decode(errors="replace")
    return status, headers, decoded


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def tierguard_argv(
    command: Sequence[str], *, cpus: str | None, nice: int = 0, no_uvloop: bool = False
) -> list[str]:
    """``python -m tierguard COMMAND...``; ``no_uvloop`` hides uvloop so the stock asyncio loop runs."""
    if no_uvloop:
        boot = "import sys; sys.modules['uvloop'] = None; from tierguard.cli import main; sys.exit(main())"
        py = [sys.executable, "-c", boot]
    else:
        py = [sys.executable, "-m", "tierguard"]
    return [*cpu_prefix(cpus, nice), *py, *command]


def start_sim(
    data: Path,
    model: str,
    *,
    log_dir: Path,
    cpus: str | None,
    latency_scale: float = 0.0,
    extra: Sequence[str] = (),
    nice: int = 0,
) -> tuple[Proc, str]:
    """A ``tierguard sim`` on a free port; returns it and its OpenAI base URL."""
    port = free_port()
    argv = tierguard_argv(
        [
            "sim",
            "--data",
            str(data),
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-scale",
            str(latency_scale),
            *extra,
        ],
        cpus=cpus,
        nice=nice,
    )
    proc = Proc(f"sim-{model}-{port}", argv, log_dir=log_dir)
    proc.wait_ready(f"http://127.0.0.1:{port}/healthz")
    return proc, f"http://127.0.0.1:{port}/v1"


def start_tierguard(
    policy: Path,
    *,
    log_dir: Path,
    cpus: str | None,
    decision_log: str,
    name: str = "tierguard",
    no_uvloop: bool = False,
    nice: int = 0,
    source: Path | None = None,
) -> tuple[Proc, str]:
    """A ``tierguard proxy`` on a free port; returns it and its base URL (no /v1).

    ``source``: a directory holding another ``tierguard`` package (e.g. ``git archive`` of an
    earlier commit) to run instead of the installed one, for before/after comparisons.
    """
    port = free_port()
    argv = tierguard_argv(
        [
            "proxy",
            "--policy",
            str(policy),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--decision-log",
            decision_log,
            "--log-level",
            "warning",
        ],
        cpus=cpus,
        nice=nice,
        no_uvloop=no_uvloop,
    )
    env = {"TIERGUARD_FEEDBACK_KEY": "bench-key"}
    if source is not None:
        if not (source / "tierguard" / "__init__.py").is_file():
            raise BenchError(f"{source}: no tierguard package there")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH", "")]))
    proc = Proc(f"{name}-{port}", argv, log_dir=log_dir, env=env)
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc, f"http://127.0.0.1:{port}"


# --- load generation ----------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(
    url: str,
    bodies: Path,
    *,
    connections: int,
    duration_s: float,
    delay_ms: float = 0.0,
    cpus: str | None = None,
    timeout_s: float = 10.0,
    nice: int = 0,
) -> WrkResult:
    """One wrk run (1 thread) POSTing the bodies in rotation; latency percentiles from wrk itself."""
    argv = [
        *cpu_prefix(cpus, nice),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(bodies),
        f"{delay_ms:g}",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            d = json.loads(line[len("WRK_JSON ") :])
            errors = sum(int(d[k]) for k in d if k.startswith("errors_"))
            return WrkResult(
                requests=int(d["requests"]),
                duration_s=d["duration_us"] / 1e6,
                errors=errors,
                p50_ms=d["p50_us"] / 1000,
                p90_ms=d["p90_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                mean_ms=d["lat_mean_us"] / 1000,
                max_ms=d["lat_max_us"] / 1000,
                error_kinds={k[len("errors_") :]: int(d[k]) for k in d if k.startswith("errors_") and d[k]},
            )
    raise BenchError(f"wrk produced no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# --- statistics and profiles ---------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def collapsed_profile_summary(
    path: Path, top: int = 25
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Read a py-spy ``--format raw`` (collapsed stacks) file: (samples, top inclusive, top self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return 0, [], []
    return (
        total,
        [(f, 100.0 * n / total) for f, n in inclusive.most_common(top)],
        [(f, 100.0 * n / total) for f, n in own.most_common(top)],
    )


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the processes a benchmark started."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_main(name: str, main: Callable[[], int]) -> None:
    """A benchmark script's entry point: clean exits on SIGTERM, Ctrl-C and BenchError."""
    exit_on_sigterm()
    try:
        sys.exit(main())
    except BenchError as err:
        print(f"{name}: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def make_log_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
