"""The demo's orchestration: start everything, drive v1 -> v2 -> v3, sample, stop everything."""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import yaml

from .. import dashboard
from ..localenv.binaries import MissingBinaryError, ensure_binaries, missing, prometheus_binary
from ..localenv.kube import ClusterStartError, KubeApiError, KubeCluster
from ..localenv.process import ManagedProcess
from ..localenv.prometheus import PrometheusError, PrometheusServer
from ..localenv.services import (
    RunningProcess,
    ServiceStartError,
    child_env,
    start_operator,
    start_proxy,
    start_sim,
)
from ..policy import parse_duration
from . import report, story, truth, view, workload
from .story import NAMESPACE, POLICY
from .timeline import Check, Decision, PanelResult, Snapshot, TierQuality, Timeline
from .traffic import ConfigSync, Load, StatusLog, get_or_none

CHAPTER_TIMEOUT = 240.0  # seconds a version may take to promote or roll back (a loaded machine is slow)
QUALITY_WINDOW = 15.0  # seconds of traffic behind the live quality numbers
GROUP = "/apis/tierguard.io/v1alpha1"
# confidence drift (PSI) over short windows, so a demo-length run exports it (docs/drift.md)
PROXY_ENV = {"TIERGUARD_PSI_WINDOW": "100", "TIERGUARD_PSI_STEP": "20", "TIERGUARD_PSI_INTERVAL": "2"}


def legend_text(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda mt: labels.get(mt.group(1), ""), template)


class DemoError(Exception):
    """A one-line reason the demo could not run; logs stay in the work directory."""


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.keep = args.workdir is not None
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tierguard-demo-")).resolve()
        self.timeline = Timeline()
        self.cluster: KubeCluster | None = None
        self.prometheus: PrometheusServer | None = None
        self.operator: ManagedProcess | None = None
        self.sims: dict[str, RunningProcess] = {}
        self.proxies: list[RunningProcess] = []
        self.threads: list[Any] = []
        self.status_log: StatusLog | None = None
        self.load: Load | None = None
        self.tally: truth.Tally | None = None
        self.versions: dict[str, str] = {}
        self.chapter = "setup"
        self.seen_events: set[str] = set()
        self.live: Any = None
        self.plain = args.plain or not sys.stdout.isatty()
        self.last_line = ""
        self.failed = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Demo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            with contextlib.suppress(Exception):
                self.live.stop()
        if exc_type is KeyboardInterrupt:
            print("\ninterrupted: stopping every process the demo started ...", file=sys.stderr, flush=True)
        self.stop()
        started = self.cluster is not None
        if started and (exc_type is not None or self.failed):
            self.keep = True
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        for t in self.threads:
            t.stop_event.set()
        for p in self.proxies:
            p.stop(timeout=5)
        if self.operator is not None:
            self.operator.stop(timeout=10)
        for s in self.sims.values():
            s.stop(timeout=5)
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.timeline.notes.append((self.elapsed(), text))
        if self.plain or self.live is None:
            print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    # ------------------------------------------------------------------ set-up
    def check_binaries(self) -> None:
        try:
            prometheus_binary()
        except MissingBinaryError as e:
            raise DemoError(str(e)) from None
        names = ["etcd", "kube-apiserver"]
        todo = missing(names)
        if todo and self.args.no_build:
            raise DemoError(
                f"missing {', '.join(todo)}: run 'bash tests/k8senv/build.sh' (or .ci/install.sh)"
            )
        if todo:
            self.note(f"building {', '.join(todo)} with tests/k8senv/build.sh (several minutes, once) ...")
        try:
            ensure_binaries(names, build=not self.args.no_build)
        except MissingBinaryError as e:
            raise DemoError(str(e).splitlines()[0]) from None

    def setup(self) -> None:
        self.check_binaries()
        data = workload.write(self.workdir / "support.jsonl", seed=self.args.seed, rows=self.args.rows)
        rows = list(workload.generate(self.args.seed, self.args.rows))
        self.reference = workload.confidence_reference(rows)
        self.tally = truth.Tally(rows)
        prompts = [(r["system_prompt"], r["user_prompt"]) for r in rows]
        self.note(f"{workload.LABEL}: {len(rows)} rows (seed {self.args.seed}) in {data}")
        try:
            self.note("starting etcd + kube-apiserver ...")
            self.cluster = KubeCluster(
                controller_manager=False, build=False, workdir=self.workdir / "kube", keep_workdir=True
            ).start()
            self.install_crds()
            self.cluster.create_namespace(NAMESPACE)
            self.cluster.create(f"{GROUP}/namespaces/{NAMESPACE}/qualityslos", story.slo_manifest())
            self.note("starting Prometheus (1 s scrapes) and the simulators ...")
            self.prometheus = PrometheusServer(
                (), scrape_interval="1s", workdir=self.workdir / "prometheus", keep_workdir=True
            ).start()
            logs = self.workdir / "logs"
            logs.mkdir(exist_ok=True)
            for role, model in (("cheap", workload.CHEAP_MODEL), ("capable", workload.CAPABLE_MODEL)):
                self.sims[role] = start_sim(
                    data, model, latency_scale=0.02, log_dir=logs, seed=self.args.seed
                )
            self.note("starting the operator ...")
            self.operator = start_operator(
                self.cluster.kubeconfig, NAMESPACE, logs / "operator.log", prometheus_url=self.prometheus.url
            )
        except (ClusterStartError, PrometheusError, ServiceStartError, KubeApiError, TimeoutError) as e:
            self.failed = True
            raise DemoError(f"{str(e).splitlines()[0]} (logs in {self.workdir})") from None
        self.versions = story.revision_names(
            self.url("cheap"), self.url("capable"), self.args.interval, self.reference
        )
        self.prompts = prompts

    def url(self, role: str) -> str:
        return self.sims[role].url

    def install_crds(self) -> None:
        """The CRDs ``tierguard crds`` prints, applied server-side."""
        assert self.cluster is not None
        res = subprocess.run(
            [sys.executable, "-m", "tierguard", "crds"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        if res.returncode != 0:
            raise DemoError(f"tierguard crds failed: {res.stderr.strip()[:300]}")
        names = []
        for crd in yaml.safe_load_all(res.stdout):
            if not crd:
                continue
            name = crd["metadata"]["name"]
            self.cluster.request(
                "PATCH",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=tierguard-demo&force=true",
                crd,
                content_type="application/apply-patch+yaml",
            )
            names.append(name)

        def established() -> bool:
            assert self.cluster is not None
            for name in names:
                crd = get_or_none(
                    self.cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                )
                status = (crd or {}).get("status") or {}
                conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
                if conds.get("Established") != "True":
                    return False
            return get_or_none(self.cluster, GROUP) is not None

        self.wait(established, 60, "the CRDs to be served", sample=False)

    def start_traffic(self) -> None:
        assert self.cluster is not None and self.prometheus is not None and self.tally is not None
        path = self.workdir / "proxy-config.yaml"
        sync = ConfigSync(self.cluster, NAMESPACE, POLICY, path)
        sync.start()
        self.threads.append(sync)
        self.wait(path.is_file, 30, "the rendered ConfigMap in the proxies' file", sample=False)
        logs = self.workdir / "logs"
        for i in range(2):
            port = self.args.port if i == 0 and self.args.port else None
            try:
                self.proxies.append(
                    start_proxy(
                        path, reload_interval=0.2, decision_log="off", log_dir=logs, port=port, env=PROXY_ENV
                    )
                )
            except ServiceStartError as e:
                self.failed = True
                raise DemoError(f"a proxy did not start: {str(e).splitlines()[0]}") from None
        self.prometheus.set_targets([(f"{p.host}:{p.port}", {"namespace": NAMESPACE}) for p in self.proxies])
        self.load = Load(
            self.proxies,
            self.prompts,
            self.args.rps,
            on_response=self.tally.record,
            feedback=self.tally.rating,
            seed=self.args.seed,
        )
        self.load.start()
        self.threads.append(self.load)
        self.note(
            f"2 proxy replicas on the operator's ConfigMap (first: {self.proxies[0].url}), "
            f"load {self.args.rps:g} requests/s"
        )

    # ------------------------------------------------------------------ the story
    def apply(self, version: str) -> None:
        assert self.cluster is not None
        manifest = story.policy_manifest(
            version, self.url("cheap"), self.url("capable"), self.args.interval, self.reference
        )
        self.cluster.request(
            "PATCH",
            f"{GROUP}/namespaces/{NAMESPACE}/cascadepolicies/{POLICY}?fieldManager=tierguard-demo&force=true",
            manifest,
            content_type="application/apply-patch+yaml",
        )

    def status(self) -> dict[str, Any]:
        assert self.status_log is not None
        return self.status_log.latest

    def label(self, revision: str | None) -> str | None:
        if revision is None:
            return None
        return self.versions.get(revision, revision)

    def run(self) -> int:
        self.setup()
        if not self.plain:
            from rich.live import Live

            self.live = Live(refresh_per_second=4, transient=False)
            self.live.start()
        assert self.cluster is not None
        self.status_log = StatusLog(self.cluster, NAMESPACE, POLICY)
        self.status_log.start()
        self.threads.append(self.status_log)
        phases: dict[str, story.Phase] = {}

        # v1: the policy in place before the story; promoted at once by hand
        self.chapter = "v1"
        self.note(f"v1 applied: {story.DESCRIPTIONS['v1']}; promoted at once (tierguard promote --full)")
        self.apply("v1")
        self.wait(lambda: self.status().get("canaryRevision") is not None, 30, "v1's first analysis step")
        promote = [sys.executable, "-m", "tierguard", "promote", POLICY, "--full", "-n", NAMESPACE]
        res = subprocess.run(
            [*promote, "--kubeconfig", str(self.cluster.kubeconfig)],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            self.failed = True
            raise DemoError(f"tierguard promote failed: {res.stderr.strip()[:300]}")
        self.wait(lambda: self.label(self.status().get("stableRevision")) == "v1", 30, "v1 to be stable")
        self.start_traffic()
        serve = 1.5 * parse_duration(self.args.interval)
        self.wait(lambda: False, serve, "", quiet_timeout=True)

        for version in ("v2", "v3"):
            self.chapter = version
            start = time.monotonic()
            self.note(f"{version} applied: {story.DESCRIPTIONS[version]}")
            self.apply(version)
            self.wait(
                lambda v=version: (
                    self.label(self.status().get("canaryRevision")) == v  # type: ignore[misc]
                    or (
                        self.status().get("phase") in ("Succeeded", "RolledBack")
                        and self.label(self.status().get("stableRevision")) == v
                    )
                ),
                30,
                f"{version} to start rolling out",
            )

            def finished(v: str = version) -> bool:
                st = self.status()
                return st.get("canaryRevision") is None or st.get("phase") in (
                    "Succeeded",
                    "RolledBack",
                    "Aborted",
                )

            self.wait(
                finished, CHAPTER_TIMEOUT, f"{version} to be promoted or rolled back", quiet_timeout=True
            )
            end = time.monotonic()
            st = self.status()
            checks = (st.get("lastAnalysis") or {}).get("checks") or []
            answers = self.tally.between(start, end) if self.tally else []
            assert self.status_log is not None
            phases[version] = story.Phase(
                version=version,
                weights=self.status_log.weights(since=start),
                final_phase=str(st.get("phase", "")),
                stable_after=self.label(st.get("stableRevision")),
                breached=story.breached_checks(checks),
                passed_aggregate=story.aggregate_green(checks),
                accuracy_all_traffic=truth.accuracy(answers),
            )
            outcome = "promoted" if st.get("phase") == "Succeeded" else str(st.get("phase", "")).lower()
            self.note(f"{version}: {outcome} after {end - start:.1f}s (weights {phases[version].weights})")
            # a few seconds of the outcome on screen
            self.wait(lambda: False, 3.0 if version == "v2" else 2.0, "", quiet_timeout=True)

        self.chapter = "done"
        self.sample()
        self.timeline.panels = self.dashboard_panels()
        problems = story.judge(phases)
        wall = self.elapsed()
        out = Path(self.args.report)
        out.write_text(report.render(self.timeline, phases, problems, wall, workload.LABEL, self.args.seed))
        if self.live is not None:
            self.live.stop()
            self.live = None
        if problems:
            self.failed = True
            print("the story did not happen as stated:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            print(f"report: {out}", file=sys.stderr)
            return 1
        v3 = phases["v3"]
        print(
            f"done in {wall:.0f}s: v2 promoted through {phases['v2'].weights}; v3 rolled back on "
            f"{', '.join(v3.breached)} while all traffic stayed at "
            f"{view.pct(v3.accuracy_all_traffic)} accuracy. Report: {out}"
        )
        return 0

    # ------------------------------------------------------------------ waiting and sampling
    def wait(
        self,
        check: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        sample: bool = True,
        quiet_timeout: bool = False,
    ) -> None:
        deadline = time.monotonic() + timeout
        next_sample = 0.0
        while True:
            try:
                if check():
                    return
            except (KubeApiError, OSError):
                pass
            self.check_alive()
            now = time.monotonic()
            if now > deadline:
                if quiet_timeout:
                    return
                self.failed = True
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what} (logs in {self.workdir})")
            if sample and now >= next_sample:
                self.sample()
                next_sample = now + 1.0
            time.sleep(0.1)

    def check_alive(self) -> None:
        procs: list[tuple[str, Any]] = [
            ("operator", self.operator),
            ("Prometheus", self.prometheus and self.prometheus.process),
        ]
        procs += [(f"{p.name} {p.port}", p.proc) for p in [*self.sims.values(), *self.proxies]]
        if self.cluster is not None:
            procs += [(p.name, p) for p in self.cluster.processes]
        for name, proc in procs:
            if proc is not None and not proc.alive():
                self.failed = True
                raise DemoError(f"{name} exited with {proc.returncode} (log {proc.log_path})")

    def sample(self) -> None:
        st = self.status() if self.status_log else {}
        self.poll_events()
        t = self.elapsed()
        quality: list[TierQuality] = []
        cost_ratio = escalation = aggregate = None
        requests = self.load.ok if self.load else 0
        if self.tally is not None and self.load is not None:
            answers = self.tally.between(time.monotonic() - QUALITY_WINDOW)
            aggregate = truth.accuracy(answers)
            disagreement = self.disagreement()
            for (rev, tier), (n, acc) in sorted(truth.by_revision_tier(answers).items()):
                quality.append(
                    TierQuality(self.label(rev) or rev, tier, n, acc, disagreement.get((rev, tier)))
                )
            cost_ratio, escalation = self.cost_and_escalation()
        last = st.get("lastAnalysis") or {}
        snap = Snapshot(
            t=t,
            chapter=self.chapter,
            phase=str(st.get("phase", "Pending")),
            stable=self.label(st.get("stableRevision")) or "capable-only",
            canary=self.label(st.get("canaryRevision")),
            weight=int(st.get("canaryWeight", 0)),
            cost_ratio=cost_ratio,
            escalation_rate=escalation,
            aggregate_accuracy=aggregate,
            quality=tuple(quality),
            analysis=str(last.get("result", "")),
            checks=tuple(
                Check(c["objective"], c.get("tier"), c["verdict"], c.get("value"), c.get("bound"))
                for c in last.get("checks") or []
            ),
            requests=requests,
        )
        self.timeline.snapshots.append(snap)
        if self.live is not None:
            self.live.update(view.render(snap, self.timeline, workload.LABEL))
        elif self.load is not None:
            text = view.line(snap)
            if text != self.last_line:
                print(text, flush=True)
                self.last_line = text

    def dashboard_panels(self) -> list[PanelResult]:
        """Every panel of the Grafana dashboard, as a range query over the run."""
        out = []
        end = time.time()
        start = end - self.elapsed()
        for panel in dashboard.PANELS:
            promql = dashboard.concrete(panel.expr, window=f"{int(QUALITY_WINDOW)}s")
            try:
                assert self.prometheus is not None
                data = self.prometheus.api(
                    "query_range",
                    {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"},
                )
            except (PrometheusError, OSError) as e:
                out.append(PanelResult(panel.title, panel.unit, promql, error=str(e).splitlines()[0]))
                continue
            series = []
            for r in data.get("result", []):
                labels = {k: self.label(v) or v for k, v in r["metric"].items()}
                legend = legend_text(panel.legend, labels)
                points = tuple(
                    (float(t) - start, float(v)) for t, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")
                )
                if points:
                    series.append((legend.strip(), points))
            out.append(PanelResult(panel.title, panel.unit, promql, tuple(sorted(series))))
        return out

    def query(self, promql: str) -> list[dict[str, Any]]:
        if self.prometheus is None:
            return []
        try:
            return self.prometheus.query(promql)
        except (PrometheusError, OSError):
            return []

    def disagreement(self) -> dict[tuple[str, str], float]:
        w = f"{int(QUALITY_WINDOW)}s"
        sel = f'{{policy="{POLICY}"}}'
        by = "sum by (revision, tier)"
        dis = {
            (r["metric"].get("revision", ""), r["metric"].get("tier", "")): float(r["value"][1])
            for r in self.query(f"{by} (increase(tierguard_shadow_disagreements_total{sel}[{w}]))")
        }
        out = {}
        for r in self.query(f"{by} (increase(tierguard_shadow_samples_total{sel}[{w}]))"):
            key = (r["metric"].get("revision", ""), r["metric"].get("tier", ""))
            n = float(r["value"][1])
            if n > 0:
                out[key] = dis.get(key, 0.0) / n
        return out

    def cost_and_escalation(self) -> tuple[float | None, float | None]:
        w = f"{int(QUALITY_WINDOW)}s"
        sel = f'{{policy="{POLICY}"}}'

        def one(q: str) -> float | None:
            res = self.query(q)
            try:
                v = float(res[0]["value"][1]) if res else None
            except (KeyError, ValueError, IndexError):
                return None
            return v if v is not None and v == v else None  # NaN: no traffic

        cost = one(
            f"sum(increase(tierguard_cost_usd_total{sel}[{w}])) / "
            f"sum(increase(tierguard_counterfactual_cost_usd_total{sel}[{w}]))"
        )
        esc = one(
            f"(sum(increase(tierguard_escalations_total{sel}[{w}])) or vector(0)) / "
            f'sum(increase(tierguard_tier_requests_total{{policy="{POLICY}",tier="{story.CHEAP_TIER}"}}[{w}]))'
        )
        return cost, esc

    def poll_events(self) -> None:
        if self.cluster is None:
            return
        selector = quote(f"involvedObject.name={POLICY}")
        try:
            body = get_or_none(
                self.cluster, f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector={selector}"
            )
        except (KubeApiError, OSError):
            return
        items = sorted(
            (body or {}).get("items", []), key=lambda e: e["metadata"].get("creationTimestamp", "")
        )
        for e in items:
            uid = e["metadata"]["uid"]
            if uid in self.seen_events:
                continue
            self.seen_events.add(uid)
            message = str(e.get("message", ""))
            for rev, version in self.versions.items():
                message = message.replace(rev, version)
            decision = Decision(self.elapsed(), str(e.get("reason", "")), message, e.get("type") == "Warning")
            self.timeline.decisions.append(decision)
            if self.plain or self.live is None:
                print(f"[{decision.t:6.1f}s] operator: {decision.reason}: {decision.message}", flush=True)
