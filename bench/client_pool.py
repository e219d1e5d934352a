"""Upstream client pools under concurrency (issue 2, encode/httpx#3215): httpx vs aiohttp.

The proxy's upstream calls are what a client pool does under load: many concurrent POSTs to one
host over kept-alive connections. This runs a client process (pinned to ``--client-cpus``) that
keeps ``--concurrency`` chat-completion POSTs in flight against a ``tierguard sim`` (pinned to
``--sim-cpus``) for ``--duration`` seconds, with:

- ``aiohttp``: ``aiohttp.ClientSession`` (unlimited ``TCPConnector``), what the proxy uses;
- ``httpx``: ``httpx.AsyncClient`` with a pool as large as the concurrency;
- ``httpx-aiohttp``: the httpx API over a minimal aiohttp-backed transport (defined here).

Reported: requests/s, client-side p50/p99 latency, and the client's CPU time per request (the
part of a proxy's per-request cost that is the upstream call). Variants run in rotating order,
``--rounds`` times; medians are reported.

    python bench/client_pool.py --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import httpx

from benchlib import (
    DEFAULT_DATA,
    BenchError,
    Proc,
    cpu_prefix,
    machine_info,
    make_log_dir,
    median,
    percentile,
    run_main,
    start_sim,
)
from tierguard.outcomes import load_outcomes

VARIANTS = ("aiohttp", "httpx", "httpx-aiohttp")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's API over an aiohttp session (buffered bodies: enough for non-streaming calls)."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        async with self.session.request(
            request.method, str(request.url), data=body, headers=list(request.headers.multi_items())
        ) as resp:
            content = await resp.read()
            return httpx.Response(resp.status, headers=list(resp.headers.items()), content=content)

    async def aclose(self) -> None:
        await self.session.close()


async def _worker_main(
    variant: str, url: str, bodies: list[bytes], concurrency: int, duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    stop_at = 0.0

    if variant == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def call(body: bytes) -> int:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        async def close() -> None:
            await session.close()
    else:
        if variant == "httpx":
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            client = httpx.AsyncClient(limits=limits, timeout=30.0)
        else:
            client = httpx.AsyncClient(transport=AiohttpTransport(), timeout=30.0)

        async def call(body: bytes) -> int:
            resp = await client.post(url, content=body, headers=headers)
            return resp.status_code

        async def close() -> None:
            await client.aclose()

    async def loop(k: int) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                status = await call(bodies[i % len(bodies)])
            except (aiohttp.ClientError, httpx.HTTPError):
                status = 0
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
            i += concurrency

    # warm-up: open the connections
    stop_at = time.perf_counter() + 1.0
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    latencies.clear()
    errors = 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.perf_counter()
    stop_at = t_start + duration
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    wall = time.perf_counter() - t_start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await close()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    ms = [x * 1000 for x in latencies]
    return {
        "variant": variant,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu_us_per_req": cpu / max(1, len(latencies)) * 1e6,
        "client_cpu": cpu / wall,
    }


def worker(args: argparse.Namespace) -> int:
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line.strip()]
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    out = asyncio.run(_worker_main(args.worker, args.url, bodies, args.concurrency, args.duration))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--model", default="llama3.2-1b")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--sim-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--json-out", type=Path, default=None)
    # internal: run one variant in this process
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    if not args.data.is_file():
        raise BenchError(f"{args.data}: no such file (pass --data)")
    log_dir = make_log_dir("tierguard-bench-pool-")
    outcomes = load_outcomes(args.data)
    rows = [r for r in outcomes.records if r.benchmark in ("mmlu", "medmcqa") and args.model in r.models][
        :200
    ]
    if not rows:
        raise BenchError(f"{args.data}: no multiple-choice rows for {args.model}")
    bodies = log_dir / "bodies.jsonl"
    with bodies.open("w") as fh:
        for r in rows:
            msgs = [{"role": "system", "content": r.system_prompt}] if r.system_prompt else []
            msgs.append({"role": "user", "content": r.user_prompt})
            fh.write(
                json.dumps({"model": args.model, "messages": msgs, "max_tokens": 16, "logprobs": True}) + "\n"
            )
    info = machine_info()
    info.update({"sim_cpus": args.sim_cpus, "client_cpus": args.client_cpus, "httpx": httpx.__version__})
    info["aiohttp"] = aiohttp.__version__
    print(f"# client pool: {json.dumps(info)}", flush=True)
    procs: list[Proc] = []
    results: list[dict[str, Any]] = []
    try:
        sim, url = start_sim(args.data, args.model, log_dir=log_dir, cpus=args.sim_cpus)
        procs.append(sim)
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(variants)
            for v in variants[k:] + variants[:k]:
                argv_w = [
                    *cpu_prefix(args.client_cpus),
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    v,
                    "--url",
                    url + "/chat/completions",
                    "--bodies",
                    str(bodies),
                    "--concurrency",
                    str(args.concurrency),
                    "--duration",
                    str(args.duration),
                ]
                out = subprocess.run(argv_w, capture_output=True, text=True, timeout=args.duration + 120)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise BenchError(f"{v} worker failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
                res = json.loads(line[len("RESULT ") :])
                res["round"] = rnd
                results.append(res)
                print(
                    f"round {rnd} {v:>14}: {res['rps']:8.0f} req/s  p50 {res['p50_ms']:7.2f} ms  "
                    f"p99 {res['p99_ms']:7.2f} ms  client CPU {res['cpu_us_per_req']:5.0f} µs/req  "
                    f"errors {res['errors']}",
                    flush=True,
                )
    finally:
        for pr in procs:
            pr.stop()
    lines = [
        f"| client ({args.concurrency} concurrent) | req/s | p50 ms | p99 ms | client CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        s = {k: median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
        s["errors"] = sum(r["errors"] for r in rs)
        summary[v] = s
        lines.append(
            f"| {v} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_us_per_req']:.0f} | {s['errors']} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"machine": info, "summary": summary, "runs": results, "table": table}, indent=1)
        )
    return 0


if __name__ == "__main__":
    run_main("client_pool", main)
