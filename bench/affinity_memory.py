"""Memory and time of the conversation-affinity table (issue 11): bytes per 100k conversations.

Fills an :class:`tierguard.affinity.AffinityTable` with N conversations keyed like real clients key
them (a UUID string per conversation; the keys' own memory is counted, as the table holds them),
measures the traced allocation with ``tracemalloc``, then times ``start_tier`` and ``record`` on a
full table (median of rounds). In-process: no server, no network.

    python bench/affinity_memory.py --conversations 100000 --rounds 5 --json-out /tmp/affinity.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine_info, run_main
from tierguard.affinity import AffinityTable

TIERS = ["cheap", "mid", "capable"]


def fill_bytes(n: int) -> tuple[int, AffinityTable, list[str]]:
    keys = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = AffinityTable(max_entries=n, ttl_s=3600.0)
    for i, k in enumerate(keys):
        table.record(k, TIERS, 1 + (i % 2), now=1000.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # the table holds the keys: count them too (they were allocated before tracing started)
    key_bytes = sum(sys.getsizeof(k) for k in keys)
    return after - before + key_bytes, table, keys


def time_ops(table: AffinityTable, keys: list[str], ops: int) -> tuple[float, float]:
    sample = keys[:ops]
    t0 = time.perf_counter()
    for k in sample:
        table.start_tier(k, TIERS, 2000.0)
    t1 = time.perf_counter()
    for k in sample:
        table.record(k, TIERS, 2, 2000.0)
    t2 = time.perf_counter()
    return (t1 - t0) / ops * 1e9, (t2 - t1) / ops * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops", type=int, default=50_000, help="lookups/records timed per round")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    sizes, lookups, records = [], [], []
    for r in range(args.rounds):
        size, table, keys = fill_bytes(args.conversations)
        lk, rc = time_ops(table, keys, min(args.ops, args.conversations))
        sizes.append(size)
        lookups.append(lk)
        records.append(rc)
        print(
            f"round {r + 1}/{args.rounds}: {size / 2**20:.1f} MiB for {args.conversations} conversations, "
            f"start_tier {lk:.0f} ns, record {rc:.0f} ns",
            file=sys.stderr,
            flush=True,
        )
        del table, keys
    med = statistics.median(sizes)
    result = {
        "machine": machine_info(),
        "conversations": args.conversations,
        "bytes_median": med,
        "bytes_per_conversation": med / args.conversations,
        "mib_per_100k": med / args.conversations * 100_000 / 2**20,
        "start_tier_ns_median": statistics.median(lookups),
        "record_ns_median": statistics.median(records),
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main("affinity_memory", main)
