"""The request path with review sampling off and on, side by side in one run (issue 13).

Two ``tierguard sim`` processes (gpt-4o-mini, gpt-4o from the recorded outcomes, answering at once)
behind three ``tierguard proxy`` processes that differ only in ``spec.proxy.review``:

- ``off``: no review sampling;
- ``default``: rate 0.01 with the default band weights and a novelty reference built from the MMLU
  train prompts, a SQLite store;
- ``all``: rate 1 (every answer sampled, redacted and queued for the store): the worst case.

Each round sends the same MMLU/MedMCQA test prompts through the three proxies in turn (order
rotating per round), ``--concurrency`` requests at a time, and records every request's latency as
the client sees it. Reported per mode: median, p90 and p99 latency over all rounds, and the
items the store received.

    python bench/review_overhead.py --rounds 3 --requests 1000 --json-out /tmp/review-overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import yaml

from benchlib import (
    DEFAULT_DATA,
    BenchError,
    machine_info,
    make_log_dir,
    median,
    percentile,
    run_main,
    start_sim,
    start_tierguard,
)
from tierguard.outcomes import load_outcomes
from tierguard.review.novelty import NoveltyReference

MODES = ("off", "default", "all")


def policy(sims: dict[str, str], review: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tiers": [
            {"name": "mini", "baseUrl": sims["gpt-4o-mini"], "model": "gpt-4o-mini",
             "priceInputPerMillion": 0.15, "priceOutputPerMillion": 0.6, "confidence": {"threshold": 0.9}},
            {"name": "capable", "baseUrl": sims["gpt-4o"], "model": "gpt-4o",
             "priceInputPerMillion": 2.5, "priceOutputPerMillion": 10.0},
        ],
    }
    if review is not None:
        spec["proxy"] = {"review": review}
    return {"apiVersion": "tierguard.io/v1alpha1", "kind": "CascadePolicy", "metadata": {"name": "bench"}, "spec": spec}


async def drive(base: str, prompts: list[tuple[str, str]], concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not queue.empty():
                system, user = queue.get_nowait()
                body = {"model": "bench", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
                t0 = time.perf_counter()
                async with session.post(f"{base}/v1/chat/completions", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise BenchError(f"{base}: HTTP {r.status}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1000, help="requests per mode per round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise BenchError(f"{args.data}: no such file (--data)")
    records = load_outcomes(args.data).records
    train = [r.user_prompt for r in records if r.benchmark == "mmlu" and r.split == "train"]
    test = [
        (r.system_prompt or "", r.user_prompt)
        for r in records
        if r.split == "test" and r.benchmark in ("mmlu", "medmcqa") and {"gpt-4o-mini", "gpt-4o"} <= set(r.models)
    ]
    log_dir = make_log_dir("tierguard-bench-review-")
    ref_path = log_dir / "novelty.json"
    NoveltyReference.build(train).save(ref_path)
    procs = []
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    try:
        sims = {}
        for model in ("gpt-4o-mini", "gpt-4o"):
            proc, url = start_sim(Path(args.data), model, log_dir=log_dir, cpus=None)
            procs.append(proc)
            sims[model] = url
        bases, stores = {}, {}
        for mode in MODES:
            review = None
            if mode != "off":
                stores[mode] = log_dir / f"review-{mode}.db"
                review = {"rate": 0.01 if mode == "default" else 1.0, "quotaPerHour": 1_000_000,
                          "noveltyReference": str(ref_path), "store": f"sqlite:{stores[mode]}", "queueSize": 100_000}
            path = log_dir / f"policy-{mode}.yaml"
            path.write_text(yaml.safe_dump(policy(sims, review)))
            proc, base = start_tierguard(path, log_dir=log_dir, cpus=None, decision_log="off", name=f"proxy-{mode}")
            procs.append(proc)
            bases[mode] = base
        lat: dict[str, list[float]] = {m: [] for m in MODES}
        for k in range(args.rounds):
            prompts = [test[(k * args.requests + i) % len(test)] for i in range(args.requests)]
            order = MODES[k % 3 :] + MODES[: k % 3]
            for mode in order:
                got = asyncio.run(drive(bases[mode], prompts, args.concurrency))
                lat[mode] += got
                print(f"  round {k + 1} {mode}: p50 {median(got) * 1000:.2f} ms, p99 {percentile(got, 99) * 1000:.2f} ms",
                      file=sys.stderr)
        time.sleep(2)  # the writers flush
        for mode in MODES:
            stored = None
            if mode in stores and stores[mode].exists():
                with sqlite3.connect(stores[mode]) as conn:
                    stored = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            xs = lat[mode]
            results[mode] = {
                "requests": len(xs),
                "p50_ms": median(xs) * 1000,
                "p90_ms": percentile(xs, 90) * 1000,
                "p99_ms": percentile(xs, 99) * 1000,
                "stored_items": stored,
            }
    finally:
        for p in procs:
            p.stop()
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    run_main("review_overhead", main)
