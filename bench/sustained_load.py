"""Sustained load: the proxy for a long run at a fraction of its measured saturation, realistic mix.

1. Saturation: ``--concurrency`` closed-loop clients for ``--saturation-seconds`` on the mix below;
   the requests/s they get is the saturation.
2. Sustained: Poisson arrivals at ``--fraction`` of that rate for ``--duration`` seconds. Per
   minute: requests, p50/p99, 5xx; every 2 s the proxy's RSS. The mix: the synthetic support
   workload (``tierguard demo --write-data``, two simulated tiers; the cheap one's threshold makes
   part of the traffic escalate), 30% streaming (early abort on), 5% followed by a feedback
   POST and 2% by an outcome event, shadow scoring on 5% of accepted answers, review sampling
   (rate 0.01, redaction on) into a SQLite review store, sticky users, the decision log to a file.

Reports zero-5xx, memory growth after warm-up, p99 per minute, and writes a memory/p99 plot (SVG).
A benchmark, not a test: it asserts nothing; results go to BENCHMARKS.md.

    python bench/sustained_load.py --duration 600 --json-out /tmp/sustained.json \\
        --svg-out bench/results/sustained-load.svg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BenchError,
    Proc,
    machine_info,
    make_log_dir,
    percentile,
    run_main,
    start_sim,
    start_tierguard,
    tierguard_argv,
)

CHEAP, CAPABLE = "support-mini", "support-large"
STREAM_SHARE, FEEDBACK_SHARE, OUTCOME_SHARE, SHADOW_RATE = 0.3, 0.05, 0.02, 0.05
REVIEW_RATE = 0.01


@dataclass
class Sample:
    t: float  # seconds since the phase started (at completion)
    latency_s: float
    status: int
    stream: bool
    error_type: str = ""


@dataclass
class Phase:
    samples: list[Sample] = field(default_factory=list)
    feedback: list[int] = field(default_factory=list)  # statuses
    outcomes: list[int] = field(default_factory=list)  # statuses of outcome-event POSTs
    transport_errors: int = 0
    transport_kinds: dict[str, int] = field(default_factory=dict)  # exception class -> count
    late: int = 0  # arrivals that found every in-flight slot taken (open loop kept up?)


def write_policy(path: Path, cheap_url: str, capable_url: str, review_store: str | None) -> None:
    spec = {
        "tiers": [
            {"name": "mini", "baseUrl": cheap_url, "model": CHEAP, "timeoutSeconds": 30,
             "maxConcurrency": 1024, "confidence": {"threshold": 0.8}},
            {"name": "large", "baseUrl": capable_url, "model": CAPABLE, "timeoutSeconds": 30},
        ],
        "confidence": {"method": "logprob", "aggregate": "quantile", "quantile": 0.1, "earlyAbort": True},
        "proxy": {"shadowRate": SHADOW_RATE, "feedbackKey": {"env": "TIERGUARD_FEEDBACK_KEY"},
                  **({"review": {"rate": REVIEW_RATE, "store": review_store, "redact": True}}
                     if review_store else {})},
    }  # fmt: skip
    manifest = {"apiVersion": "tierguard.io/v1alpha1", "kind": "CascadePolicy",
                "metadata": {"name": "sustained", "namespace": "bench"}, "spec": spec}  # fmt: skip
    path.write_text(yaml.safe_dump(manifest))


def load_prompts(data: Path) -> list[list[dict[str, str]]]:
    prompts = []
    with data.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            msgs = [{"role": "system", "content": row["system_prompt"]}] if row.get("system_prompt") else []
            prompts.append([*msgs, {"role": "user", "content": row["user_prompt"]}])
    if not prompts:
        raise BenchError(f"{data}: no prompts")
    return prompts


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Load:
    def __init__(self, base: str, prompts: list[list[dict[str, str]]], seed: int) -> None:
        self.base = base
        self.prompts = prompts
        self.rng = random.Random(seed)

    async def one(self, session: aiohttp.ClientSession, phase: Phase, t0: float) -> None:
        stream = self.rng.random() < STREAM_SHARE
        feedback = self.rng.random() < FEEDBACK_SHARE
        outcome = not feedback and self.rng.random() < OUTCOME_SHARE
        body = {"model": "sustained", "messages": self.rng.choice(self.prompts),
                "user": f"user-{self.rng.randrange(5000)}", "stream": stream}  # fmt: skip
        start = time.perf_counter()
        try:
            async with session.post(f"{self.base}/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as err:
            phase.transport_errors += 1
            kind = type(err).__name__
            phase.transport_kinds[kind] = phase.transport_kinds.get(kind, 0) + 1
            return
        end = time.perf_counter()
        error_type = ""
        response_id = None
        if status != 200:
            try:
                error_type = json.loads(raw)["error"]["type"]
            except (ValueError, KeyError, TypeError):
                error_type = "unparsed"
        elif not stream:
            response_id = json.loads(raw).get("id")
        else:
            first = raw.split(b"\n", 1)[0]
            if first.startswith(b"data:"):
                response_id = json.loads(first[5:]).get("id")
        phase.samples.append(Sample(end - t0, end - start, status, stream, error_type))
        if feedback and response_id:
            rating = "up" if self.rng.random() < 0.8 else "down"
            try:
                async with session.post(
                    f"{self.base}/v1/feedback", json={"id": response_id, "rating": rating}
                ) as resp:
                    await resp.read()
                    phase.feedback.append(resp.status)
            except (aiohttp.ClientError, TimeoutError):
                phase.transport_errors += 1
        if outcome and response_id:
            events = [{"id": response_id, "event": "rating", "value": self.rng.randint(1, 5)}]
            try:
                async with session.post(f"{self.base}/v1/outcomes", json={"events": events}) as resp:
                    await resp.read()
                    phase.outcomes.append(resp.status)
            except (aiohttp.ClientError, TimeoutError):
                phase.transport_errors += 1

    async def closed_loop(self, concurrency: int, seconds: float) -> tuple[Phase, float]:
        phase = Phase()
        t0 = time.perf_counter()
        stop = t0 + seconds
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:

            async def worker() -> None:
                while time.perf_counter() < stop:
                    await self.one(s, phase, t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return phase, time.perf_counter() - t0

    async def open_loop(
        self, rate: float, seconds: float, max_in_flight: int, pid: int, rss: list[tuple[float, int]]
    ) -> Phase:
        phase = Phase()
        t0 = time.perf_counter()
        conn = aiohttp.TCPConnector(limit=max_in_flight)
        slots = asyncio.Semaphore(max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def sample_rss() -> None:
            while True:
                rss.append((time.perf_counter() - t0, rss_kib(pid)))
                await asyncio.sleep(2.0)

        async def run_one(s: aiohttp.ClientSession) -> None:
            try:
                await self.one(s, phase, t0)
            finally:
                slots.release()

        sampler = asyncio.create_task(sample_rss())
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
            next_at = t0
            last_report = t0
            while True:
                next_at += self.rng.expovariate(rate)
                if next_at - t0 >= seconds:
                    break
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if slots.locked():
                    phase.late += 1
                await slots.acquire()
                task = asyncio.create_task(run_one(s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                now = time.perf_counter()
                if now - last_report >= 60:
                    last_report = now
                    done = len(phase.samples)
                    print(f"  {now - t0:5.0f} s: {done} requests, RSS {rss[-1][1] / 1024:.1f} MiB",
                          file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.gather(*tasks)
        sampler.cancel()
        return phase


def minutes(phase: Phase, seconds: float, rss: list[tuple[float, int]]) -> list[dict[str, Any]]:
    rows = []
    for m in range(int(seconds // 60) + (1 if seconds % 60 else 0)):
        lo, hi = m * 60, min(seconds, (m + 1) * 60)
        window = [x for x in phase.samples if lo <= x.t < hi]
        lat = [x.latency_s * 1000 for x in window if x.status == 200]
        in_minute = [kib for t, kib in rss if lo <= t < hi]
        rows.append(
            {
                "minute": m + 1,
                "seconds": hi - lo,
                "requests": len(window),
                "rps": len(window) / (hi - lo) if hi > lo else 0.0,
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "status_5xx": sum(1 for x in window if x.status >= 500),
                "status_4xx": sum(1 for x in window if 400 <= x.status < 500),
                "rss_mib_end": (in_minute[-1] / 1024) if in_minute else float("nan"),
            }
        )
    return rows


def svg(rss: list[tuple[float, int]], per_minute: list[dict[str, Any]], title: str) -> str:
    """Two small line charts: the proxy's RSS over time, and p99 per minute."""
    w, h, pad = 640, 200, 45

    def chart(points: list[tuple[float, float]], y0: float, label: str, unit: str, color: str) -> str:
        if not points:
            return ""
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        xmax = max(xs) or 1.0
        ymin, ymax = 0.0, max(ys) * 1.15 or 1.0

        def px(x: float) -> float:
            return pad + (w - 2 * pad) * x / xmax

        def py(y: float) -> float:
            return y0 + h - pad / 2 - (h - pad) * (y - ymin) / (ymax - ymin)

        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        ticks = "".join(
            f'<text x="{pad - 5}" y="{py(v):.1f}" font-size="10" text-anchor="end">{v:.0f}</text>'
            f'<line x1="{pad}" x2="{w - pad}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>'
            for v in (ymax / 1.15 * f for f in (0, 0.5, 1.0))
        )
        xt = "".join(
            f'<text x="{px(x):.1f}" y="{y0 + h - 5}" font-size="10" text-anchor="middle">{x / 60:.0f} min</text>'
            for x in (0, xmax / 2, xmax)
        )
        return (
            f'<text x="{pad}" y="{y0 + 14}" font-size="12">{label} ({unit})</text>{ticks}{xt}'
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>'
        )

    mem = chart([(t, kib / 1024) for t, kib in rss], 20, "proxy RSS", "MiB", "#1f77b4")
    p99 = chart([(r["minute"] * 60 - 30, r["p99_ms"]) for r in per_minute if r["p99_ms"] == r["p99_ms"]],
                20 + h, "p99 latency per minute", "ms", "#d62728")  # fmt: skip
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{2 * h + 30}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/><text x="{pad}" y="14" font-size="13">{title}</text>'
        f"{mem}{p99}</svg>\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="sustained phase, seconds (default 600)")
    p.add_argument("--warmup", type=float, default=60.0, help="memory baseline after this many seconds")
    p.add_argument("--saturation-seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop clients measuring saturation")
    p.add_argument("--fraction", type=float, default=0.8, help="share of saturation offered (default 0.8)")
    p.add_argument("--rows", type=int, default=2000, help="synthetic workload rows")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--no-review", action="store_true", help="without review sampling (and its store)")
    p.add_argument("--pin", action="store_true",
                   help="proxy on CPU 1; simulators and this load generator on CPU 0")  # fmt: skip
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--svg-out", type=Path, default=None)
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1 or args.duration < 60 or args.warmup >= args.duration:
        p.error("need 0 < --fraction <= 1, --duration >= 60 and --warmup < --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs = make_log_dir("tierguard-sustained-")
    data = logs / "support.jsonl"
    Proc("write-data", tierguard_argv(["demo", "--write-data", str(data), "--rows", str(args.rows)],
         cpus=None), log_dir=logs).popen.wait(120)  # fmt: skip
    if not data.is_file():
        raise BenchError(f"tierguard demo --write-data failed (logs in {logs})")
    procs: list[Proc] = []
    try:
        side, own = ("0", "1") if args.pin else (None, None)
        if args.pin:
            os.sched_setaffinity(0, {0})
        cheap, cheap_url = start_sim(data, CHEAP, log_dir=logs, cpus=side)
        capable, capable_url = start_sim(data, CAPABLE, log_dir=logs, cpus=side)
        procs += [cheap, capable]
        policy = logs / "policy.yaml"
        write_policy(
            policy, cheap_url, capable_url, None if args.no_review else f"sqlite:{logs / 'review.db'}"
        )
        proxy, base = start_tierguard(
            policy, log_dir=logs, cpus=own, decision_log=str(logs / "decisions.jsonl")
        )
        procs.append(proxy)
        load = Load(base, load_prompts(data), args.seed)
        print(f"saturation: {args.concurrency} closed-loop clients for {args.saturation_seconds:g} s ...",
              file=sys.stderr, flush=True)  # fmt: skip
        sat_phase, sat_s = asyncio.run(load.closed_loop(args.concurrency, args.saturation_seconds))
        sat_rps = len(sat_phase.samples) / sat_s
        rate = args.fraction * sat_rps
        print(f"saturation {sat_rps:.0f} req/s; offering {rate:.0f} req/s for {args.duration:g} s",
              file=sys.stderr, flush=True)  # fmt: skip
        rss: list[tuple[float, int]] = []
        phase = asyncio.run(load.open_loop(rate, args.duration, 1024, proxy.pid, rss))
        alive = proxy.alive()
    finally:
        for p in reversed(procs):
            p.stop()
    # an overloaded machine falls behind the arrival schedule: the run then lasts longer than
    # --duration (every scheduled request is still sent); report over the real wall time
    wall = max([args.duration, *(x.t for x in phase.samples)])
    per_minute = minutes(phase, wall, rss)
    base_rss = next((kib for t, kib in rss if t >= args.warmup), rss[0][1] if rss else 0)
    end_rss = rss[-1][1] if rss else 0
    peak_rss = max((kib for _, kib in rss), default=0)
    # full minutes after the warm-up (a tail of a few requests past the schedule is not a minute)
    p99s = [r["p99_ms"] for r in per_minute if r["minute"] * 60 > args.warmup and r["seconds"] >= 30]
    statuses: dict[str, int] = {}
    for x in phase.samples:
        key = str(x.status) + (f" {x.error_type}" if x.error_type else "")
        statuses[key] = statuses.get(key, 0) + 1
    result = {
        "machine": machine_info(),
        "command": "python bench/sustained_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "mix": {
            "stream": STREAM_SHARE,
            "feedback": FEEDBACK_SHARE,
            "outcome_events": OUTCOME_SHARE,
            "review_rate": REVIEW_RATE,
            "shadow_rate": SHADOW_RATE,
            "workload": f"tierguard demo --write-data --rows {args.rows}",
        },
        "saturation_rps": sat_rps,
        "saturation_5xx": sum(1 for x in sat_phase.samples if x.status >= 500),
        "offered_rps": rate,
        "duration_s": args.duration,
        "wall_s": wall,
        "requests": len(phase.samples),
        "achieved_rps": len(phase.samples) / wall,
        "statuses": statuses,
        "status_5xx": sum(1 for x in phase.samples if x.status >= 500),
        "transport_errors": phase.transport_errors,
        "transport_error_kinds": phase.transport_kinds,
        "late_arrivals": phase.late,
        "feedback": {str(s): phase.feedback.count(s) for s in sorted(set(phase.feedback))},
        "outcomes": {str(s): phase.outcomes.count(s) for s in sorted(set(phase.outcomes))},
        "streams": sum(1 for x in phase.samples if x.stream),
        "rss_mib": {"after_warmup": base_rss / 1024, "end": end_rss / 1024, "peak": peak_rss / 1024},
        "memory_growth_after_warmup": (end_rss - base_rss) / base_rss if base_rss else float("nan"),
        "p99_ms_per_minute_after_warmup": p99s,
        "p99_max_over_min": (max(p99s) / min(p99s)) if p99s and min(p99s) > 0 else float("nan"),
        "proxy_alive_at_end": alive,
        "per_minute": per_minute,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_minute"}, indent=1))
    print("minute  requests   rps   p50 ms   p99 ms   5xx   RSS MiB")
    for r in per_minute:
        print(f"{r['minute']:6d} {r['requests']:9d} {r['rps']:5.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['status_5xx']:5d} {r['rss_mib_end']:9.1f}")  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    if args.svg_out:
        args.svg_out.parent.mkdir(parents=True, exist_ok=True)
        title = f"tierguard proxy at {rate:.0f} req/s ({args.fraction:.0%} of saturation), {args.duration / 60:.0f} min"
        args.svg_out.write_text(svg(rss, per_minute, title))
    print(f"logs: {logs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main("sustained_load", main)
