"""The review write path (issue 13): how many sampled items per second one proxy's writer stores,
and what sampling adds to a request's bookkeeping.

1. Store throughput: ``--items`` items offered to a :class:`ReviewWriter` as fast as possible
   (queue large enough to hold them all), timed until the writer thread has stored them, into
   SQLite (a WAL file in a temporary directory) and into PostgreSQL (a real server from Debian's
   package started on loopback as by the tests, or ``--pg-url``). Items per second, median of
   ``--rounds``.
2. Per-request cost of :meth:`ReviewSampling.observe`: novelty score against a reference built
   from the recorded MMLU train prompts, the stratified draw and, for sampled answers, redaction and
   the queue offer. Microseconds per call at rate 0 (off), at the default rate 0.01 (answers in the
   lowest band: weight 8, so the novelty is scored on the ~40% of answers whose draw could still
   select them) and at rate 1 (everything sampled, queue drained by a SQLite writer), median of
   ``--rounds``.

    python bench/review_write.py --rounds 5 --items 20000 --json-out /tmp/review-write.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from prometheus_client import CollectorRegistry

from benchlib import DEFAULT_DATA, BenchError, machine_info, run_main
from tierguard.outcomes import load_outcomes
from tierguard.policy import ReviewSpec
from tierguard.review.metrics import ReviewMetrics
from tierguard.review.novelty import NoveltyReference
from tierguard.review.observer import Answered, ReviewSampling
from tierguard.review.store import Item, open_store
from tierguard.review.writer import ReviewWriter


def _items(n: int, prompts: list[str], tag: str) -> list[Item]:
    now = time.time()
    return [
        Item(
            id=f"chatcmpl-{tag}-{i}", ts=now, policy="bench", revision="r1", tier="cheap", band="0-0.5",
            confidence=0.4, novelty=0.5, probability=0.05, prompt=prompts[i % len(prompts)], answer="B",
            cost_usd=1e-5, counterfactual_usd=1e-4, config_hash="h",
        )
        for i in range(n)
    ]


def store_throughput(url: str, items: list[Item]) -> float:
    store = open_store(url)
    drops: list[int] = []
    writer = ReviewWriter(lambda: store, queue_size=len(items) + 10, on_drop=lambda r, n: drops.append(n))
    t0 = time.perf_counter()
    for it in items:
        writer.offer(it)
    writer.drain(timeout=600)
    elapsed = time.perf_counter() - t0
    writer.close()
    if drops:
        raise BenchError(f"{sum(drops)} items dropped writing to {url}")
    return len(items) / elapsed


def observe_cost(spec: ReviewSpec, ref: NoveltyReference, prompts: list[str], n: int, url: str) -> float:
    store = open_store(url)
    writer = ReviewWriter(lambda: store, queue_size=n + 10)
    sampling = ReviewSampling(spec, ReviewMetrics(CollectorRegistry()), writer, ref, random.Random(1))
    calls = [
        Answered(f"chatcmpl-o-{i}", "bench", "r1", "cheap", 0.4, [{"role": "user", "content": prompts[i % len(prompts)]}],
                 "B", 1e-5, 1e-4, "h")
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for a in calls:
        sampling.observe(a)
    elapsed = time.perf_counter() - t0
    writer.drain(timeout=600)
    writer.close()
    return elapsed / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--pg-url", default=None, help="an existing PostgreSQL database (default: start one)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise BenchError(f"{args.data}: no such file (--data)")
    records = load_outcomes(args.data).records
    train = [r.user_prompt for r in records if r.benchmark == "mmlu" and r.split == "train"]
    test = [r.user_prompt for r in records if r.benchmark in ("mmlu", "medmcqa") and r.split == "test"]
    ref = NoveltyReference.build(train)
    tmp = Path(tempfile.mkdtemp(prefix="tierguard-bench-review-"))
    results: dict[str, Any] = {"machine": machine_info(), "items": args.items, "rounds": args.rounds}
    pg = None
    urls = {"sqlite": lambda k: f"sqlite:{tmp / f'r{k}.db'}"}
    if not args.no_pg:
        if args.pg_url:
            urls["postgresql"] = lambda k: args.pg_url
        else:
            from infra.postgres import PostgresServer

            pg = PostgresServer().start()
            urls["postgresql"] = lambda k: pg.create_database(f"bench{k}")
    try:
        for kind, make in urls.items():
            rates = []
            for k in range(args.rounds):
                rates.append(store_throughput(make(k), _items(args.items, test, f"{kind}{k}")))
                print(f"  {kind} round {k + 1}: {rates[-1]:,.0f} items/s", file=sys.stderr)
            results[f"{kind}_items_per_s"] = {"median": statistics.median(rates), "all": rates}
        for label, rate in (("off", 0.0), ("default", 0.01), ("all", 1.0)):
            spec = ReviewSpec(rate=rate, quota_per_hour=1_000_000)
            us = [observe_cost(spec, ref, test, args.items, f"sqlite:{tmp / f'o{label}{k}.db'}") for k in range(args.rounds)]
            results[f"observe_us_sampled_{label}"] = {"median": statistics.median(us), "all": us}
            print(f"  observe, sampled {label}: {statistics.median(us):.1f} µs/call", file=sys.stderr)
    finally:
        if pg is not None:
            pg.stop()
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    run_main("review_write", main)
