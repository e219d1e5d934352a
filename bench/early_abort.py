"""Streaming early abort (issue 2): what stopping a doubtful cheap tier saves on escalated requests.

A two-tier cascade over the real recorded outcomes: tier 0 ``llama3.2-1b``, tier 1 ``gpt-4o``,
both ``tierguard sim`` processes replaying the recorded latencies (scaled by
``--latency-scale``) as token streams. The prompts are GSM8K questions, whose answers are long
step-by-step solutions, and only those whose recorded tier-0 confidence is below the tier-0
threshold: every request escalates. Aggregation is ``min`` (``--aggregate`` to change it).

Two proxies serve the same policy but for ``confidence.earlyAbort``: ``true`` stops tier 0's
stream as soon as no continuation can reach the threshold, ``false`` reads it to the end before
judging. Each round sends every prompt through both (order alternating), ``--concurrency``
streams at a time, and reads each stream to ``[DONE]``.

Reported per mode: median and p90 end-to-end latency of the escalated requests, median time to
the first content token, and the tier-0 tokens the simulator streamed (its ``/admin/stats``)
next to the tokens tier 0 would have produced in full.

    python bench/early_abort.py --rounds 3 --latency-scale 0.5 --json-out /tmp/early_abort.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import yaml

from benchlib import (
    DEFAULT_DATA,
    BenchError,
    Proc,
    get_json,
    machine_info,
    make_log_dir,
    median,
    percentile,
    run_main,
    start_sim,
    start_tierguard,
)
from tierguard.outcomes import OutcomeRecord, load_outcomes
from tierguard.sim.data import tokenize

MODES = ("abort", "no-abort")


@dataclass
class Result:
    round: int
    mode: str
    qid: str
    latency_s: float
    first_byte_s: float
    tiers_tried: str
    answered_by: str
    chunks: int
    ok: bool
    error: str = ""


def select_rows(data: Path, tier0: str, tier1: str, threshold: float, count: int) -> list[OutcomeRecord]:
    outcomes = load_outcomes(data)
    for m in (tier0, tier1):
        if m not in outcomes.models:
            raise BenchError(f"model {m!r} is not in {data}; models: {', '.join(outcomes.models)}")
    rows = []
    for r in outcomes.records:
        if r.benchmark != "gsm8k" or tier0 not in r.models or tier1 not in r.models:
            continue
        conf = r.models[tier0].confidence
        if conf is None or conf >= threshold:
            continue  # only requests that escalate
        rows.append(r)
    if not rows:
        raise BenchError(f"{data}: no GSM8K rows where {tier0}'s confidence is below {threshold}")
    return rows[:count]


def write_policy(
    path: Path, urls: tuple[str, str], models: tuple[str, str], threshold: float, abort: bool, aggregate: str
) -> None:
    spec = {
        "tiers": [
            {
                "name": "small",
                "baseUrl": urls[0],
                "model": models[0],
                "timeoutSeconds": 120,
                "confidence": {"threshold": threshold},
            },
            {"name": "large", "baseUrl": urls[1], "model": models[1], "timeoutSeconds": 120},
        ],
        "confidence": {"method": "logprob", "aggregate": aggregate, "quantile": 0.1, "earlyAbort": abort},
    }
    manifest = {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": "bench-early-abort", "namespace": "bench"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(manifest))


def body_for(r: OutcomeRecord, max_tokens: int) -> dict[str, Any]:
    messages = []
    if r.system_prompt:
        messages.append({"role": "system", "content": r.system_prompt})
    messages.append({"role": "user", "content": r.user_prompt})
    return {"model": "cascade", "messages": messages, "stream": True, "max_tokens": max_tokens}


async def one(
    session: aiohttp.ClientSession, url: str, r: OutcomeRecord, rnd: int, mode: str, max_tokens: int
) -> Result:
    start = time.perf_counter()
    first = math.nan
    chunks = 0
    try:
        async with session.post(url, json=body_for(r, max_tokens)) as resp:
            tried = resp.headers.get("x-tierguard-tiers-tried", "")
            tier = resp.headers.get("x-tierguard-tier", "")
            if resp.status != 200:
                text = await resp.text()
                return Result(
                    rnd, mode, r.qid, time.perf_counter() - start, first, tried, tier, 0, False, text[:200]
                )
            done = False
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                chunks += 1
                if first != first and _has_content(payload):
                    first = time.perf_counter() - start
        latency = time.perf_counter() - start
        return Result(
            rnd, mode, r.qid, latency, first, tried, tier, chunks, done, "" if done else "no [DONE]"
        )
    except (aiohttp.ClientError, TimeoutError) as err:
        return Result(rnd, mode, r.qid, time.perf_counter() - start, first, "", "", chunks, False, repr(err))


def _has_content(payload: bytes) -> bool:
    try:
        chunk = json.loads(payload)
        return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])
    except (ValueError, AttributeError, TypeError):
        return False


async def run_mode(
    url: str, rows: list[OutcomeRecord], rnd: int, mode: str, concurrency: int, max_tokens: int
) -> list[Result]:
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def guarded(r: OutcomeRecord) -> Result:
            async with sem:
                return await one(session, url, r, rnd, mode, max_tokens)

        return list(await asyncio.gather(*(guarded(r) for r in rows)))


def sim_stats(base: str) -> dict[str, Any]:
    stats = get_json(base + "/admin/stats")
    assert isinstance(stats, dict)
    return stats


def reset_stats(base: str) -> None:
    req = urllib.request.Request(base + "/admin/stats/reset", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def decision_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "request":
            out.append(e)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="recorded outcomes JSONL")
    p.add_argument("--tier0", default="llama3.2-1b", help="the cheap tier's model")
    p.add_argument("--tier1", default="gpt-4o", help="the capable tier's model")
    p.add_argument("--threshold", type=float, default=0.8, help="tier-0 confidence threshold")
    p.add_argument("--prompts", type=int, default=40, help="escalating GSM8K prompts per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8, help="streams in flight at once")
    p.add_argument("--latency-scale", type=float, default=0.5, help="multiplies the recorded latencies")
    p.add_argument("--max-tokens", type=int, default=1024, help="max_tokens of each request")
    p.add_argument(
        "--aggregate",
        default="min",
        choices=["min", "quantile", "mean"],
        help="confidence aggregation (quantile q=0.1)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--sim-cpus", default="0")
    p.add_argument("--proxy-cpus", default="1")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.no_pin:
        args.sim_cpus = args.proxy_cpus = None
    if args.rounds < 1 or args.prompts < 1 or args.concurrency < 1:
        p.error("--rounds, --prompts and --concurrency must be positive")
    if not 0.0 < args.threshold <= 1.0:
        p.error("--threshold must be in (0, 1]")
    if args.latency_scale <= 0:
        p.error("--latency-scale must be > 0 (streaming must take visible time)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        raise BenchError(f"{args.data}: no such file (pass --data)")
    rows = select_rows(args.data, args.tier0, args.tier1, args.threshold, args.prompts)
    full_tokens = {r.qid: len(tokenize(r.models[args.tier0].answer)) for r in rows}
    log_dir = make_log_dir("tierguard-bench-abort-")
    info = machine_info()
    info.update(
        {
            "prompts": len(rows),
            "log_dir": str(log_dir),
            "sim_cpus": args.sim_cpus,
            "proxy_cpus": args.proxy_cpus,
        }
    )
    print(f"# early abort: {json.dumps(info)}", flush=True)
    procs: list[Proc] = []
    try:
        scale = f"{args.latency_scale:g}"
        sim0, url0 = start_sim(
            args.data, args.tier0, log_dir=log_dir, cpus=args.sim_cpus, latency_scale=float(scale)
        )
        sim1, url1 = start_sim(
            args.data, args.tier1, log_dir=log_dir, cpus=args.sim_cpus, latency_scale=float(scale)
        )
        procs += [sim0, sim1]
        sim0_base = url0.removesuffix("/v1")
        proxies: dict[str, str] = {}
        logs: dict[str, Path] = {}
        for mode in MODES:
            policy = log_dir / f"policy-{mode}.yaml"
            write_policy(
                policy,
                (url0, url1),
                (args.tier0, args.tier1),
                args.threshold,
                mode == "abort",
                args.aggregate,
            )
            logs[mode] = log_dir / f"decisions-{mode}.jsonl"
            proc, base = start_tierguard(
                policy,
                log_dir=log_dir,
                cpus=args.proxy_cpus,
                decision_log=str(logs[mode]),
                name=f"proxy-{mode}",
            )
            procs.append(proc)
            proxies[mode] = base + "/v1/chat/completions"

        results: list[Result] = []
        tokens: dict[str, list[int]] = {m: [] for m in MODES}
        streams_cancelled: dict[str, list[int]] = {m: [] for m in MODES}
        walls: dict[str, list[float]] = {m: [] for m in MODES}
        for rnd in range(1, args.rounds + 1):
            order = MODES if rnd % 2 else tuple(reversed(MODES))
            for mode in order:
                reset_stats(sim0_base)
                t0 = time.perf_counter()
                res = asyncio.run(run_mode(proxies[mode], rows, rnd, mode, args.concurrency, args.max_tokens))
                walls[mode].append(time.perf_counter() - t0)
                time.sleep(0.5)  # let the simulator notice closed streams
                st = sim_stats(sim0_base)
                tokens[mode].append(int(st["stream_tokens_sent"]))  # includes streams later cancelled
                streams_cancelled[mode].append(int(st["streams_cancelled"]))
                results += res
                ok = [x for x in res if x.ok]
                print(
                    f"round {rnd} {mode:>8}: {len(ok)}/{len(res)} ok, median latency "
                    f"{median(x.latency_s for x in ok) * 1000:.0f} ms, tier-0 tokens streamed {tokens[mode][-1]}, "
                    f"tier-0 streams cancelled {streams_cancelled[mode][-1]}, wall {walls[mode][-1]:.1f} s",
                    flush=True,
                )

        bad = [x for x in results if not x.ok or x.tiers_tried != "small,large" or x.answered_by != "large"]
        time.sleep(1.5)  # decision logs flush every second
        summary: dict[str, Any] = {}
        full_per_round = sum(full_tokens.values())
        lines = [
            "| earlyAbort | escalated requests | median latency ms | p90 latency ms | median first token ms | "
            "tier-0 time ms (median) | tier-0 tokens streamed per round | tier-0 tokens in full answers | "
            "tier-0 streams cancelled |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode in MODES:
            ok = [x for x in results if x.mode == mode and x.ok and x.answered_by == "large"]
            lat = [x.latency_s * 1000 for x in ok]
            fb = [x.first_byte_s * 1000 for x in ok if x.first_byte_s == x.first_byte_s]
            entries = decision_entries(logs[mode])
            seen = [
                t.get("tokens_seen_before_abort")
                for e in entries
                for t in e.get("tiers", [])
                if t.get("tier") == "small" and t.get("tokens_seen_before_abort") is not None
            ]
            tier0_ms = [
                float(t["latency_ms"])
                for e in entries
                for t in e.get("tiers", [])
                if t.get("tier") == "small"
            ]
            reasons: dict[str, int] = {}
            for e in entries:
                for t in e.get("tiers", []):
                    if t.get("tier") == "small":
                        reasons[str(t.get("reason"))] = reasons.get(str(t.get("reason")), 0) + 1
            summary[mode] = {
                "requests": len(ok),
                "median_latency_ms": median(lat),
                "p90_latency_ms": percentile(lat, 90),
                "median_first_token_ms": median(fb),
                "tier0_tokens_streamed_per_round": median(tokens[mode]),
                "tier0_tokens_full_per_round": full_per_round,
                "tier0_streams_cancelled_per_round": median(streams_cancelled[mode]),
                "tokens_seen_before_abort_median": median(float(s) for s in seen) if seen else None,
                "tier0_reasons": reasons,
                "tier0_median_ms": median(tier0_ms),
                "wall_s_per_round": median(walls[mode]),
            }
            s = summary[mode]
            lines.append(
                f"| {'true' if mode == 'abort' else 'false'} | {s['requests']} | {s['median_latency_ms']:.0f} | "
                f"{s['p90_latency_ms']:.0f} | {s['median_first_token_ms']:.0f} | {s['tier0_median_ms']:.0f} | "
                f"{s['tier0_tokens_streamed_per_round']:.0f} | {full_per_round} | "
                f"{s['tier0_streams_cancelled_per_round']:.0f} |"
            )
        a, b = summary["abort"], summary["no-abort"]
        saved_ms = b["median_latency_ms"] - a["median_latency_ms"]
        by_key = {(x.round, x.mode, x.qid): x.latency_s for x in results if x.ok}
        paired = [
            (by_key[(x.round, "no-abort", x.qid)] - x.latency_s) * 1000
            for x in results
            if x.mode == "abort" and x.ok and (x.round, "no-abort", x.qid) in by_key
        ]
        summary["paired_saving_ms_median"] = median(paired)
        lines.append("")
        lines.append(
            f"Median latency saved per escalated request: {saved_ms:.0f} ms "
            f"({100 * saved_ms / b['median_latency_ms']:.1f}%); median of per-request savings "
            f"{summary['paired_saving_ms_median']:.0f} ms; tier-0 tokens streamed: "
            f"{a['tier0_tokens_streamed_per_round']:.0f} vs {b['tier0_tokens_streamed_per_round']:.0f} per round "
            f"of {len(rows)} requests."
        )
        lines.append(
            f"Tier-0 decision reasons: earlyAbort=true {a['tier0_reasons']}, false {b['tier0_reasons']}."
        )
        if bad:
            lines.append(f"\n{len(bad)} request(s) failed or were not escalated, e.g. {asdict(bad[0])}")
        table = "\n".join(lines)
        print("\n" + table, flush=True)
        if args.json_out:
            args.json_out.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "args": {k: v for k, v in vars(args).items() if k != "json_out"},
                        "summary": summary,
                        "table": table,
                        "results": [asdict(x) for x in results],
                    },
                    indent=1,
                    default=str,
                )
            )
            print(f"# wrote {args.json_out}")
        return 1 if bad else 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    run_main("early_abort", main)
