"""Proxy overhead (issue 2): tierguard's proxy vs calling the simulator directly vs LiteLLM's proxy.

Chat completions whose cheap tier accepts (tier-0 threshold 0.05), non-streaming (``--stream``:
streamed), with prompts from the real recorded-outcomes file, sent by ``wrk`` (one thread) in
these scenarios:

- ``sat``: 64 connections, closed loop, no pause: requests/s at saturation and the latency there;
- ``paced-R``: 64 connections that pause between requests so that about R requests/s are
  offered (wrk's ``delay()``): latency below saturation, where "added latency" is meaningful;
- ``c1``: one connection, closed loop: the per-request cost with no queueing at all.

Targets, all answering from the same simulator process:

- ``direct``: the simulator itself;
- ``tierguard``: ``tierguard proxy`` with its decision log written to a file;
- ``tierguard-nolog``: the same with ``--decision-log off``;
- ``tierguard-asyncio``: decision log to a file, uvloop hidden (stock asyncio loop);
- ``tierguard-ref``: like ``tierguard``, but the package from ``--ref-src`` (an earlier
  version, e.g. ``git archive REV operator/tierguard | tar -x -C DIR`` and ``--ref-src
  DIR/operator``): before/after comparisons of proxy changes in one run. ``--ref-src
  NAME=DIR`` (repeatable) adds a target ``tierguard-ref-NAME`` per package instead;
- ``litellm``: LiteLLM's proxy (1 uvicorn worker, no database, no master key, no callbacks).

Every round runs every scenario for every target, targets in rotating order; the report gives
medians over rounds, and added latency as the median of per-round differences to ``direct``.

By default the load generator and the simulators share CPU 0 and the proxy under test has CPU
1 to itself (``--no-pin`` lets the kernel place everything).

    python bench/proxy_overhead.py --rounds 5 --duration 10 --json-out /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml

from benchlib import (
    DEFAULT_DATA,
    BenchError,
    Proc,
    collapsed_profile_summary,
    cpu_busy_seconds,
    cpu_prefix,
    free_port,
    loadavg,
    machine_info,
    make_log_dir,
    median,
    post_json,
    require_tool,
    run_main,
    run_wrk,
    start_sim,
    start_tierguard,
)
from tierguard.outcomes import load_outcomes

ALL_TARGETS = ("direct", "tierguard", "tierguard-nolog", "tierguard-asyncio", "tierguard-ref", "litellm")
DEFAULT_TARGETS = ("direct", "tierguard", "tierguard-nolog", "litellm")
TIER0_THRESHOLD = 0.05


@dataclass
class Scenario:
    name: str
    connections: int
    delay_ms: float
    offered_rps: float | None = None


@dataclass
class Target:
    name: str
    url: str
    proc: Proc | None  # the proxy process measured (None for direct)


@dataclass
class Run:
    round: int
    scenario: str
    target: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    requests: int
    proxy_cpu: float  # CPU-seconds per wall-second of the proxy process
    sim_cpu: float
    loadgen_cpu: float
    other_cpu: float  # busy CPUs not explained by the processes of this benchmark
    loadavg: float
    extra: dict[str, Any] = field(default_factory=dict)


# --- set-up -------------------------------------------------------------------------------------


def build_bodies(data: Path, model: str, count: int, out: Path, *, stream: bool = False) -> int:
    """Chat bodies for ``model`` from multiple-choice rows (short answers), deterministic order."""
    outcomes = load_outcomes(data)
    if model not in outcomes.models:
        raise BenchError(f"model {model!r} is not in {data}; models: {', '.join(outcomes.models)}")
    rows = [
        r
        for r in outcomes.records
        if r.benchmark in ("mmlu", "medmcqa")
        and model in r.models
        and r.models[model].conf_logprob is not None
        and (r.models[model].tokens_out or 1) <= 4
    ][:count]
    if not rows:
        raise BenchError(f"{data}: no multiple-choice rows with a confidence for {model}")
    with out.open("w") as fh:
        for r in rows:
            messages = []
            if r.system_prompt:
                messages.append({"role": "system", "content": r.system_prompt})
            messages.append({"role": "user", "content": r.user_prompt})
            body = {"model": model, "messages": messages, "max_tokens": 16, "logprobs": True}
            if stream:
                body["stream"] = True
            fh.write(json.dumps(body) + "\n")
    return len(rows)


def write_policy(path: Path, tier0_url: str, tier0_model: str, tier1_url: str, tier1_model: str) -> None:
    spec = {
        "tiers": [
            {
                "name": "small",
                "baseUrl": tier0_url,
                "model": tier0_model,
                "timeoutSeconds": 30,
                "maxConcurrency": 1024,
                "confidence": {"threshold": TIER0_THRESHOLD},
            },
            {"name": "large", "baseUrl": tier1_url, "model": tier1_model, "timeoutSeconds": 30},
        ],
        "confidence": {"method": "logprob", "aggregate": "quantile", "quantile": 0.1},
    }
    manifest = {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(manifest))


def start_litellm(
    sim_url: str, model: str, *, log_dir: Path, cpus: str | None, nice: int
) -> tuple[Proc, str]:
    exe = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    if not Path(exe).exists():
        raise BenchError("LiteLLM is not installed: pip install 'litellm[proxy]' (the 'bench' extra)")
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": sim_url, "api_key": "sk-bench"},
            }
        ],
        "litellm_settings": {"set_verbose": False, "telemetry": False, "request_timeout": 30},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    cfg = log_dir / "litellm.yaml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        *cpu_prefix(cpus, nice),
        exe,
        "--config",
        str(cfg),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        # uvicorn closes idle connections after 5 s by default; paced connections pause longer
        # at times (aiohttp, under tierguard and the simulator, keeps them 75 s)
        "--keepalive_timeout",
        "75",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: the bundled price map
        "LITELLM_LOG": "ERROR",
        # no master key and no database: no auth or spend tracking, like tierguard's data path
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    if os.environ.get("DATABASE_URL"):
        raise BenchError("unset DATABASE_URL: the comparison runs LiteLLM without a database")
    proc = Proc(f"litellm-{port}", argv, log_dir=log_dir, env=env)
    proc.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
    return proc, f"http://127.0.0.1:{port}"


def preflight(target: Target, bodies: Path, expect_tier: str | None) -> None:
    """Every body once: all must succeed; through tierguard all must be answered by tier 0."""
    url = target.url + "/v1/chat/completions"
    tiers: dict[str, int] = {}
    for line in bodies.read_text().splitlines():
        status, headers, answer = post_json(url, json.loads(line))
        if status != 200:
            raise BenchError(
                f"{target.name}: preflight request failed with HTTP {status}: {str(answer)[:300]}"
            )
        if expect_tier is not None:
            t = headers.get("x-tierguard-tier", "?")
            tiers[t] = tiers.get(t, 0) + 1
    if expect_tier is not None and set(tiers) != {expect_tier}:
        raise BenchError(f"{target.name}: expected every answer from tier {expect_tier}, got {tiers}")


# --- measuring ----------------------------------------------------------------------------------


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(
    target: Target,
    scenario: Scenario,
    round_no: int,
    bodies: Path,
    sims: list[Proc],
    args: argparse.Namespace,
) -> Run:
    proxy0 = target.proc.cpu_seconds() if target.proc else 0.0
    sims0 = sum(p.cpu_seconds() for p in sims)
    kids0 = children_cpu()
    busy0 = cpu_busy_seconds()
    t0 = time.monotonic()
    res = run_wrk(
        target.url + "/v1/chat/completions",
        bodies,
        connections=scenario.connections,
        duration_s=args.duration,
        delay_ms=scenario.delay_ms,
        cpus=args.loadgen_cpus,
        nice=args.nice,
    )
    wall = time.monotonic() - t0
    proxy_cpu = (target.proc.cpu_seconds() - proxy0) / wall if target.proc else 0.0
    sim_cpu = (sum(p.cpu_seconds() for p in sims) - sims0) / wall
    loadgen_cpu = (children_cpu() - kids0) / wall
    busy = (cpu_busy_seconds() - busy0) / wall
    other = max(0.0, busy - proxy_cpu - sim_cpu - loadgen_cpu)
    return Run(
        round=round_no,
        scenario=scenario.name,
        target=target.name,
        rps=res.rps,
        p50_ms=res.p50_ms,
        p90_ms=res.p90_ms,
        p99_ms=res.p99_ms,
        mean_ms=res.mean_ms,
        errors=res.errors,
        requests=res.requests,
        proxy_cpu=proxy_cpu,
        sim_cpu=sim_cpu,
        loadgen_cpu=loadgen_cpu,
        other_cpu=other,
        loadavg=loadavg(),
        extra={"error_kinds": res.error_kinds} if res.error_kinds else {},
    )


def fmt(x: float, digits: int = 2) -> str:
    if x != x:
        return "n/a"
    return f"{x:.{digits}f}"


def summarize(runs: list[Run], scenarios: list[Scenario], targets: list[str]) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {}
    for sc in scenarios:
        offered = f", offered ~{sc.offered_rps:g} req/s" if sc.offered_rps else ""
        lines.append(f"\n### {sc.name}: {sc.connections} connection(s){offered}\n")
        lines.append(
            "| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU | "
            "proxy CPU µs/req | other load (CPUs) | errors | rounds |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        direct = {r.round: r for r in runs if r.scenario == sc.name and r.target == "direct"}
        sc_sum: dict[str, Any] = {}
        for t in targets:
            rs = [r for r in runs if r.scenario == sc.name and r.target == t]
            if not rs:
                continue
            added50 = [r.p50_ms - direct[r.round].p50_ms for r in rs if r.round in direct]
            added99 = [r.p99_ms - direct[r.round].p99_ms for r in rs if r.round in direct]
            cpu_us = [r.proxy_cpu / r.rps * 1e6 for r in rs if r.rps > 0 and r.proxy_cpu > 0]
            row: dict[str, Any] = {
                "rps": median(r.rps for r in rs),
                "p50_ms": median(r.p50_ms for r in rs),
                "p99_ms": median(r.p99_ms for r in rs),
                "added_p50_ms": median(added50) if t != "direct" else 0.0,
                "added_p99_ms": median(added99) if t != "direct" else 0.0,
                "proxy_cpu": median(r.proxy_cpu for r in rs),
                "proxy_cpu_us_per_req": median(cpu_us),
                "other_cpu": median(r.other_cpu for r in rs),
                "errors": sum(r.errors for r in rs),
                "rounds": len(rs),
                "per_round_rps": [round(r.rps, 1) for r in rs],
            }
            if sc.offered_rps:
                row["saturated"] = row["rps"] < 0.9 * sc.offered_rps
            sc_sum[t] = row
            sat = " (saturated)" if row.get("saturated") else ""
            lines.append(
                f"| {t}{sat} | {fmt(row['rps'], 0)} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | "
                f"{'' if t == 'direct' else fmt(row['added_p50_ms'])} | "
                f"{'' if t == 'direct' else fmt(row['added_p99_ms'])} | "
                f"{'' if t == 'direct' else fmt(row['proxy_cpu'])} | "
                f"{'' if t == 'direct' else fmt(row['proxy_cpu_us_per_req'], 0)} | "
                f"{fmt(row['other_cpu'])} | {row['errors']} | {row['rounds']} |"
            )
        if "litellm" in sc_sum:
            ll = sc_sum["litellm"]["rps"]
            for t in targets:
                if t.startswith("tierguard") and t in sc_sum and ll:
                    ratio = sc_sum[t]["rps"] / ll
                    sc_sum[t]["rps_vs_litellm"] = ratio
                    lines.append(f"\n{t} / litellm requests/s: **{ratio:.1f}x**")
        summary[sc.name] = sc_sum
    return "\n".join(lines), summary


def profile_proxy(target: Target, bodies: Path, args: argparse.Namespace, out: Path) -> str:
    """py-spy on the proxy during one saturation run; the hottest frames as text."""
    assert target.proc is not None
    pyspy = require_tool("py-spy", "pip install py-spy")
    wrk = subprocess.Popen(
        [
            *cpu_prefix(args.loadgen_cpus),
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.profile + 3:g}s",
            "-s",
            str(Path(__file__).resolve().parent / "wrk_post.lua"),
            target.url + "/v1/chat/completions",
            "--",
            str(bodies),
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    pyspy_argv = [pyspy, "record", "-p", str(target.proc.pid), "-d", f"{args.profile:g}", "-r", "250"]
    pyspy_argv += ["-f", "raw", "-o", str(out)]
    subprocess.run(
        pyspy_argv,
        capture_output=True,
        timeout=args.profile + 60,
        check=False,
    )
    wrk.wait(timeout=args.profile + 30)
    total, inclusive, own = collapsed_profile_summary(out, top=40)
    text = [f"py-spy: {total} samples of {target.name} at saturation (raw stacks: {out})", "", "inclusive:"]
    text += [f"  {pct:5.1f}%  {frame}" for frame, pct in inclusive]
    text += ["", "self:"]
    text += [f"  {pct:5.1f}%  {frame}" for frame, pct in own[:25]]
    return "\n".join(text)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="recorded outcomes JSONL")
    p.add_argument("--model", default="llama3.2-1b", help="the cheap tier's model in the data")
    p.add_argument("--tier1-model", default="gpt-4o", help="the second tier's model (never called)")
    p.add_argument("--prompts", type=int, default=200, help="distinct prompts sent in rotation")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of load per target before round 1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--paced-rates",
        default="50,500",
        help="offered req/s of the paced scenarios (comma list, '' for none)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="every request asks for a streamed answer (SSE): tierguard buffers tier 0's stream, "
        "judges it, then sends it",
    )
    p.add_argument("--no-c1", action="store_true", help="skip the one-connection scenario")
    p.add_argument("--no-sat", action="store_true", help="skip the saturation scenario")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"comma list from {ALL_TARGETS}")
    p.add_argument(
        "--ref-src",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="directory with another tierguard package: target tierguard-ref (or tierguard-ref-NAME)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--loadgen-cpus", default="0", help="CPUs of wrk (taskset list)")
    p.add_argument("--sim-cpus", default="0", help="CPUs of the simulators")
    p.add_argument("--proxy-cpus", default="1", help="CPUs of the proxies under test")
    p.add_argument("--nice", type=int, default=0, help="nice value of every benchmark process")
    p.add_argument("--profile", type=float, default=0.0, help="also py-spy the tierguard proxy for N seconds")
    p.add_argument("--json-out", type=Path, default=None, help="write all runs and the summary here")
    args = p.parse_args(argv)
    if args.no_pin:
        args.loadgen_cpus = args.sim_cpus = args.proxy_cpus = None
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in args.targets if t not in ALL_TARGETS]  # refs are added below
    if bad:
        p.error(f"unknown target(s) {', '.join(bad)}; known: {', '.join(ALL_TARGETS)}")
    args.refs = {}
    for item in args.ref_src:
        name, sep, path = item.partition("=")
        args.refs["tierguard-ref" + (f"-{name}" if sep else "")] = Path(path if sep else item)
    if "tierguard-ref" in args.targets and "tierguard-ref" not in args.refs:
        p.error("target tierguard-ref needs --ref-src DIR")
    args.targets = [t for t in args.targets if t != "tierguard-ref"] + list(args.refs)
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")
    try:
        args.rates = [float(x) for x in args.paced_rates.split(",") if x.strip()]
    except ValueError:
        p.error(f"--paced-rates must be a comma list of numbers, got {args.paced_rates!r}")
    if any(r <= 0 for r in args.rates):
        p.error("--paced-rates must be positive")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--rounds, --duration and --connections must be positive")
    return args


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("aiohttp", "uvloop", "prometheus_client", "litellm", "uvicorn", "httptools"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tool("wrk", "apt-get install -y wrk")
    if args.no_pin is False:
        require_tool("taskset", "apt-get install -y util-linux")
    if not args.data.is_file():
        raise BenchError(f"{args.data}: no such file (pass --data)")
    log_dir = make_log_dir("tierguard-bench-overhead-")
    bodies = log_dir / "bodies.jsonl"
    n = build_bodies(args.data, args.model, args.prompts, bodies, stream=args.stream)
    scenarios: list[Scenario] = []
    if not args.no_sat:
        scenarios.append(Scenario("sat", args.connections, 0.0))
    for rate in args.rates:
        scenarios.append(
            Scenario(f"paced-{rate:g}", args.connections, 1000.0 * args.connections / rate, rate)
        )
    if not args.no_c1:
        scenarios.append(Scenario("c1", 1, 0.0))

    info = machine_info()
    info.update(
        {
            "loadgen_cpus": args.loadgen_cpus,
            "sim_cpus": args.sim_cpus,
            "proxy_cpus": args.proxy_cpus,
            "versions": versions(),
            "prompts": n,
            "log_dir": str(log_dir),
        }
    )
    print(f"# proxy overhead: {json.dumps(info)}", flush=True)
    procs: list[Proc] = []
    try:
        sim0, sim0_url = start_sim(args.data, args.model, log_dir=log_dir, cpus=args.sim_cpus, nice=args.nice)
        sim1, sim1_url = start_sim(
            args.data, args.tier1_model, log_dir=log_dir, cpus=args.sim_cpus, nice=args.nice
        )
        procs += [sim0, sim1]
        policy = log_dir / "policy.yaml"
        write_policy(policy, sim0_url, args.model, sim1_url, args.tier1_model)
        targets: list[Target] = []
        for name in args.targets:
            if name == "direct":
                targets.append(Target(name, sim0_url.removesuffix("/v1"), None))
                continue
            if name == "litellm":
                proc, url = start_litellm(
                    sim0_url, args.model, log_dir=log_dir, cpus=args.proxy_cpus, nice=args.nice
                )
            else:
                decision_log = (
                    "off" if name == "tierguard-nolog" else str(log_dir / f"{name}-decisions.jsonl")
                )
                proc, url = start_tierguard(
                    policy,
                    log_dir=log_dir,
                    cpus=args.proxy_cpus,
                    decision_log=decision_log,
                    name=name,
                    no_uvloop=name == "tierguard-asyncio",
                    nice=args.nice,
                    source=args.refs.get(name),
                )
            procs.append(proc)
            targets.append(Target(name, url, proc))
        for t in targets:
            preflight(t, bodies, "small" if t.name.startswith("tierguard") else None)
            if args.warmup > 0:
                run_wrk(
                    t.url + "/v1/chat/completions",
                    bodies,
                    connections=args.connections,
                    duration_s=args.warmup,
                    cpus=args.loadgen_cpus,
                )
        print(f"# {len(targets)} targets ready, {n} prompts, logs in {log_dir}", flush=True)

        runs: list[Run] = []
        sims = [sim0, sim1]
        for rnd in range(1, args.rounds + 1):
            for sc in scenarios:
                k = (rnd - 1) % len(targets)
                order = targets[k:] + targets[:k]
                for t in order:
                    run = measure(t, sc, rnd, bodies, sims, args)
                    runs.append(run)
                    print(
                        f"round {rnd} {sc.name:>10} {t.name:>18}: {run.rps:8.1f} req/s  p50 {run.p50_ms:8.2f} ms  "
                        f"p99 {run.p99_ms:8.2f} ms  errors {run.errors}  proxy cpu {run.proxy_cpu:.2f}  "
                        f"other {run.other_cpu:.2f}  load {run.loadavg:.1f}",
                        flush=True,
                    )
        table, summary = summarize(runs, scenarios, [t.name for t in targets])
        print(table, flush=True)
        profile_text = ""
        if args.profile > 0:
            tg = next((t for t in targets if t.name == "tierguard"), None)
            if tg is not None:
                profile_text = profile_proxy(tg, bodies, args, log_dir / "tierguard-profile.raw")
                print("\n" + profile_text, flush=True)
        if args.json_out:
            args.json_out.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "args": {k: v for k, v in vars(args).items() if k != "json_out"},
                        "scenarios": [asdict(s) for s in scenarios],
                        "runs": [asdict(r) for r in runs],
                        "summary": summary,
                        "table": table,
                        "profile": profile_text,
                    },
                    indent=1,
                    default=str,
                )
            )
            print(f"# wrote {args.json_out}")
    finally:
        for p in reversed(procs):
            p.stop()
    return 0


if __name__ == "__main__":
    run_main("proxy_overhead", main)
