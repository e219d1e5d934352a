"""A real Prometheus server for integration tests.

Runs Debian's ``/usr/bin/prometheus`` (2.42 on Debian 12) on a free loopback port
with a temporary TSDB and a generated config. Scrape targets come from a
``file_sd_configs`` file, so :meth:`PrometheusServer.set_targets` changes them
while the server runs (Prometheus notices the file change within ~1s).

    with PrometheusServer(targets=["127.0.0.1:8000"], scrape_self=True) as prom:
        prom.wait_for_value('up{instance="127.0.0.1:8000"}', lambda v: v == 1)
        prom.query("sum(rate(tierguard_requests_total[10s]))")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from tierguard.localenv.binaries import prometheus_binary
from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess, format_logs

# A target is "host:port", ("host:port", {"label": "value"}), or a file_sd group
# {"targets": ["host:port", ...], "labels": {...}}. Special labels work as in any
# Prometheus SD: "__metrics_path__" (default /metrics), "__scheme__" (http),
# "__param_<name>" (URL query parameters).
Target: TypeAlias = str | tuple[str, Mapping[str, str]] | Mapping[str, Any]

DEFAULT_JOB = "tierguard-test"


class PrometheusError(RuntimeError):
    pass


def _groups(targets: Iterable[Target]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for t in targets:
        if isinstance(t, str):
            groups.append({"targets": [t], "labels": {}})
        elif isinstance(t, tuple):
            addr, labels = t
            groups.append({"targets": [addr], "labels": {k: str(v) for k, v in labels.items()}})
        elif isinstance(t, Mapping) and "targets" in t:
            groups.append(
                {
                    "targets": [str(x) for x in t["targets"]],
                    "labels": {k: str(v) for k, v in dict(t.get("labels", {})).items()},
                }
            )
        else:
            raise TypeError(f"unsupported target spec: {t!r}")
    return groups


class PrometheusServer:
    """Debian's Prometheus on ``127.0.0.1:<free port>`` with a temporary TSDB.

    Args:
        targets: initial scrape targets (see :data:`Target`), job ``job_name``.
        scrape_interval: scrape and rule-evaluation interval (default ``1s``).
        scrape_self: also scrape this Prometheus itself (job ``prometheus``).
        job_name: job label of the file_sd targets.
        rule_files: recording/alerting rule files to load.
        extra_scrape_configs: more ``scrape_configs`` entries (dicts), verbatim.
        extra_args: appended command-line flags.
        binary: the prometheus executable (default ``/usr/bin/prometheus``,
            or ``$TIERGUARD_PROMETHEUS``).
        listen_host: the address to listen on (default loopback; a node's bridge IP makes it
            reachable from pods).
        workdir: config/data/log directory (default: new temp dir, removed by
            :meth:`stop` unless ``keep_workdir`` or ``TIERGUARD_KEEP_TMP=1``).
    """

    def __init__(
        self,
        targets: Sequence[Target] = (),
        *,
        scrape_interval: str = "1s",
        scrape_timeout: str | None = None,
        scrape_self: bool = False,
        job_name: str = DEFAULT_JOB,
        rule_files: Sequence[str | os.PathLike[str]] = (),
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
        extra_args: Sequence[str] = (),
        binary: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        keep_workdir: bool = False,
        startup_timeout: float = 60.0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self._initial_targets = list(targets)
        self.scrape_interval = scrape_interval
        self.scrape_timeout = scrape_timeout
        self.scrape_self = scrape_self
        self.job_name = job_name
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.extra_scrape_configs = [dict(c) for c in extra_scrape_configs]
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary else None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tierguard-prom-"))
        self.keep_workdir = keep_workdir or os.environ.get("TIERGUARD_KEEP_TMP", "") in ("1", "true", "yes")
        self.startup_timeout = startup_timeout
        self.listen_host = listen_host
        self.port = 0
        self.process: ManagedProcess | None = None
        self.targets_file = self.workdir / "targets" / "targets.json"
        self.config_file = self.workdir / "prometheus.yml"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``<listen_host>:<port>`` (also this server's own scrape target address)."""
        return f"{self.listen_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> PrometheusServer:
        try:
            binary = self.binary or prometheus_binary()
        except BaseException:
            self.stop()
            raise
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_targets(self._initial_targets)
        for attempt in range(3):
            self.port = free_port(self.listen_host)
            self._write_config()
            data = self.workdir / "data"
            shutil.rmtree(data, ignore_errors=True)
            args = [
                str(binary),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={self.address}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
                *self.extra_args,
            ]
            log = self.workdir / f"prometheus.{attempt}.log" if attempt else self.workdir / "prometheus.log"
            self.process = ManagedProcess("prometheus", args, log).start()
            try:
                self._wait_ready()
                return self
            except PrometheusError:
                text = self.process.log_text()
                self.process.stop()
                if "address already in use" in text and attempt < 2:
                    continue
                self._fail_start("Prometheus failed to start")
        raise AssertionError("unreachable")

    def _fail_start(self, msg: str) -> None:
        logs = format_logs([self.process]) if self.process else ""
        if self.process:
            self.process.stop()
        raise PrometheusError(f"{msg} (workdir kept: {self.workdir})\n{logs}")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.process.alive():
                raise PrometheusError("prometheus exited")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                self._fail_start(f"Prometheus not ready after {self.startup_timeout:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self, lines: int = 60) -> str:
        return format_logs([self.process], lines) if self.process else ""

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        scrape_configs: list[dict[str, Any]] = []
        job: dict[str, Any] = {
            "job_name": self.job_name,
            "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
        }
        scrape_configs.append(job)
        if self.scrape_self:
            scrape_configs.append({"job_name": "prometheus", "static_configs": [{"targets": [self.address]}]})
        scrape_configs.extend(self.extra_scrape_configs)
        glob: dict[str, Any] = {
            "scrape_interval": self.scrape_interval,
            "evaluation_interval": self.scrape_interval,
        }
        if self.scrape_timeout:
            glob["scrape_timeout"] = self.scrape_timeout
        cfg: dict[str, Any] = {"global": glob, "scrape_configs": scrape_configs}
        if self.rule_files:
            cfg["rule_files"] = self.rule_files
        # JSON is valid YAML, and Prometheus parses its config as YAML.
        self.config_file.write_text(json.dumps(cfg, indent=2) + "\n")

    def write_targets(self, targets: Sequence[Target]) -> None:
        """Atomically rewrite the file_sd targets file."""
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(_groups(targets), indent=2) + "\n")
        os.replace(tmp, self.targets_file)

    def set_targets(self, targets: Sequence[Target], *, wait: bool = True, timeout: float = 30.0) -> None:
        """Replace the scrape targets of job ``job_name`` at run time.

        With ``wait=True`` returns once Prometheus' active target list for the
        job matches the new set (scrapes of the new targets follow within one
        ``scrape_interval``).
        """
        self.write_targets(targets)
        if not wait:
            return
        want = sorted(addr for g in _groups(targets) for addr in g["targets"])
        deadline = time.monotonic() + timeout
        while True:
            have = sorted(
                t["discoveredLabels"].get("__address__", "") for t in self.active_targets(self.job_name)
            )
            if have == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus targets for job {self.job_name} are {have}, expected {want}")
            time.sleep(0.2)

    def reload(self) -> None:
        """Re-read the config file (POST /-/reload)."""
        self._write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    # ------------------------------------------------------------------ HTTP API
    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises on ``status != success``)."""
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"GET {url}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body}")
        return body["data"]

    def query(self, promql: str, time_: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result list (``[{"metric": {...}, "value": [ts, "v"]}, ...]``
        for vectors; scalars/strings are returned as a one-element list with an empty metric)."""
        params = {"query": promql}
        if time_ is not None:
            params["time"] = str(time_)
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_value(self, promql: str) -> float | None:
        """The single sample value of an instant query, or ``None`` if it returns nothing.

        Raises if the query returns more than one series.
        """
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_for_value(
        self,
        promql: str,
        predicate: Callable[[float], bool] = lambda v: True,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> float:
        """Poll ``promql`` until it returns one value satisfying ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                v = self.query_value(promql)
                last = v
                if v is not None and predicate(v):
                    return v
            except PrometheusError as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{promql!r} did not satisfy the condition in {timeout:.0f}s (last: {last})"
                )
            time.sleep(interval)

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        targets = self.api("targets", {"state": "active"})["activeTargets"]
        return [t for t in targets if job is None or t["labels"].get("job") == job]
