"""CPU per request of the proxy's code, this tree against another package, on a busy machine.

``proxy_overhead.py`` measures latency and throughput across processes; when other work shares
the machine its numbers move with the scheduler. This script measures what a change costs in
CPU, which moves much less: the proxy (``ProxyApp``) and an aiohttp client run in ONE process and
event loop, a real ``tierguard sim`` answers behind it, and the process's CPU time over N requests
(64 in flight, tier 0 accepting, the decision log written to a file) is divided by N. The client's
share is the same for both packages, so the difference is the proxy's. Each round runs this tree's
package and the ``--ref-src`` one in turn, in fresh processes.

    git archive HEAD~1 operator/tierguard | tar -x -C /tmp/ref
    python bench/proxy_cpu.py --ref-src /tmp/ref/operator --rounds 3 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DEFAULT_DATA, REPO, BenchError, make_log_dir, median, run_main, start_sim
from proxy_overhead import build_bodies, write_policy


async def measure(
    policy: Path, bodies: list[dict[str, Any]], n: int, concurrency: int, log: Path
) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from tierguard.policy import load_proxy_config
    from tierguard.proxy.app import ProxyApp
    from tierguard.proxy.decision_log import DecisionLog
    from tierguard.proxy.ids import IdSigner

    proxy = ProxyApp(load_proxy_config(policy), IdSigner(b"bench-key" * 4), DecisionLog(str(log)))
    runner = web.AppRunner(proxy.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem, session.post(url, json=bodies[i % len(bodies)]) as resp:
                await resp.read()
                if resp.status != 200 or resp.headers.get("x-tierguard-tier") != "small":
                    raise BenchError(
                        f"request {i}: HTTP {resp.status}, tier {resp.headers.get('x-tierguard-tier')}"
                    )

        await asyncio.gather(*(one(i) for i in range(min(n, 400))))  # warm-up
        gc.collect()
        gc.freeze()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await runner.cleanup()
    return {"cpu_us_per_req": cpu / n * 1e6, "req_per_s": n / wall}


def child(args: argparse.Namespace) -> int:
    gc.set_threshold(10_000, 20, 100)  # as `tierguard proxy` sets it
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bodies = [json.loads(line) for line in Path(args.bodies).read_text().splitlines()]
    result = asyncio.run(measure(Path(args.policy), bodies, args.requests, args.concurrency, Path(args.log)))
    print(json.dumps(result))
    return 0


def run_child(src: Path, args: argparse.Namespace, policy: Path, bodies: Path, log: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, __file__, "--child", "--policy", str(policy), "--bodies", str(bodies)]
    argv += ["--requests", str(args.requests), "--concurrency", str(args.concurrency), "--log", str(log)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"{src}: measurement failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--ref-src", type=Path, required=False, help="directory holding the other tierguard package"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="recorded outcomes JSONL")
    p.add_argument("--model", default="llama3.2-1b", help="the cheap tier's model in the data")
    p.add_argument("--requests", type=int, default=3000, help="measured requests per run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stream", action="store_true", help="streamed requests (SSE)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.ref_src is None or not (args.ref_src / "tierguard" / "__init__.py").is_file():
        raise BenchError("--ref-src DIR: a directory holding a tierguard package (see the module docstring)")
    if not args.data.is_file():
        raise BenchError(f"{args.data}: no such file (pass --data)")
    log_dir = make_log_dir("tierguard-bench-cpu-")
    bodies = log_dir / "bodies.jsonl"
    build_bodies(args.data, args.model, 200, bodies, stream=args.stream)
    sim, sim_url = start_sim(args.data, args.model, log_dir=log_dir, cpus=None)
    try:
        policy = log_dir / "policy.yaml"
        write_policy(policy, sim_url, args.model, sim_url, args.model)  # tier 1 is never called
        sources = {"tierguard": REPO / "operator", "tierguard-ref": args.ref_src}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
        for rnd in range(1, args.rounds + 1):
            for name, src in sources.items():
                r = run_child(src, args, policy, bodies, log_dir / f"{name}-decisions.jsonl")
                runs[name].append(r)
                print(
                    f"round {rnd} {name:14s} {r['cpu_us_per_req']:8.0f} µs CPU/req  {r['req_per_s']:6.0f} req/s",
                    flush=True,
                )
    finally:
        sim.stop()
    cpu = {name: median(r["cpu_us_per_req"] for r in rs) for name, rs in runs.items()}
    ratios = [
        a["cpu_us_per_req"] / b["cpu_us_per_req"]
        for a, b in zip(runs["tierguard"], runs["tierguard-ref"], strict=True)
    ]
    print(
        f"\nmedian CPU µs/req ({'stream' if args.stream else 'json'}, {args.requests} requests x {args.rounds} rounds): "
        f"tierguard {cpu['tierguard']:.0f}, tierguard-ref {cpu['tierguard-ref']:.0f}, "
        f"ratio of medians {cpu['tierguard'] / cpu['tierguard-ref']:.3f}, median per-round ratio {median(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    run_main("proxy_cpu", main)
