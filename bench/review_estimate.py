"""How well the stratified review sample estimates per-tier accuracy on recorded data (issue 13).

The MMLU 3-tier cascade (examples/replay/mmlu-3tier.yaml) is fitted on MMLU train rows: by default
the thresholds selected on train without a guarantee (``--policy-fit selected``; the certified
rule of ``tierguard calibrate`` certifies nothing cheaper than the capable tier on 285 MMLU rows,
which would leave no cheaper tier to estimate), or ``certified``. Then ``--runs`` streams of
``--requests`` requests are drawn with replacement from the MMLU test rows at one request per
second. Every answer goes through the stratified sampler (:class:`tierguard.review.sampling.Sampler`,
default bands and weights, novelty against the train prompts, the default hourly quota); every
sampled answer is labelled with its recorded correctness. ``--label-share`` fixes the label budget
as a share of requests (0.01: 100 labels per 10,000 requests; the sampler's base rate is scaled to
spend it on pre-drawn pilot streams), or ``--rate`` gives the sampler's base rate directly.

Per tier, two estimators on the same labels, each with its 95% interval
(:func:`tierguard.review.estimate.estimates`): the Hájek ratio (inclusion-weighted mean label) and
the difference estimator (mean calibrated confidence of every answer of the tier + inclusion-
weighted mean residual ``label - confidence``). Compared with the stream's true accuracy of that
tier: the share of runs within +-2 points, the median and 90th percentile absolute error, the
interval's coverage and median width. A uniform sample with the same label budget (every weight 1,
no novelty) is run alongside.

    python bench/review_estimate.py --runs 200 --label-share 0.01 --json-out /tmp/review-estimate.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DEFAULT_DATA, BenchError, machine_info, run_main
from tierguard.calibration import calibrate, selected_on_train
from tierguard.cascade import route
from tierguard.outcomes import load_dataset
from tierguard.policy import ReviewSpec, load_policy_spec
from tierguard.review.estimate import Population, SampledItem, estimates
from tierguard.review.novelty import NoveltyReference
from tierguard.review.sampling import Sampler

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--policy", default=str(REPO / "examples" / "replay" / "mmlu-3tier.yaml"))
    ap.add_argument("--policy-fit", choices=("selected", "certified"), default="selected")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=None, help="the sampler's base rate")
    ap.add_argument("--label-share", type=float, default=0.01, help="labels per request (unless --rate)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise BenchError(f"{args.data}: no such file (--data)")
    _, spec = load_policy_spec(args.policy)
    ds = load_dataset(args.data, spec, benchmarks=["mmlu"])
    train, test = ds.select(split="train"), ds.select(split="test")
    fitted = (
        selected_on_train(spec, train, 0.01) if args.policy_fit == "selected" else calibrate(spec, train).spec
    )
    names = [t.name for t in fitted.tiers]
    ref = NoveltyReference.build(r.prompt for r in train)
    # per test row: answering tier, its calibrated confidence, correct, novelty
    table = []
    for r in test:
        rt = route(fitted, r.raw)
        j = rt.judgements[-1]
        table.append((rt.answered_by, j.confidence, r.correct[rt.answered_by], ref.novelty(r.prompt)))
    rng = random.Random(args.seed)
    rate = args.rate
    if rate is None:  # the base rate whose expected labels per request are --label-share
        pilot = [table[rng.randrange(len(table))] for _ in range(20_000)]
        probe = ReviewSpec(rate=0.01)
        labels = sum(Sampler(probe, random.Random(0)).target(w, n) for w, n in _weights(probe, pilot))
        rate = 0.01 * args.label_share * len(pilot) / labels
        print(f"  base rate {rate:.5f} for {args.label_share:.2%} labels per request", file=sys.stderr)
    designs = ("stratified", "uniform")
    estimators = ("hajek", "difference")
    out: dict[str, Any] = {
        "machine": machine_info(),
        "args": vars(args),
        "base_rate": rate,
        "tiers": names,
        "policy": [t.confidence.threshold for t in fitted.tiers[:-1]],
        "designs": {},
    }
    per: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    labels_per_run: dict[str, list[int]] = {d: [] for d in designs}
    for run in range(args.runs):
        stream = [table[rng.randrange(len(table))] for _ in range(args.requests)]
        truth: dict[str, float | None] = {}
        pops: dict[tuple[str, str], Population] = {}
        for t in range(len(names)):
            mine = [(conf, c) for (tier, conf, c, _n) in stream if tier == t]
            truth[names[t]] = sum(c for _, c in mine) / len(mine) if mine else None
            if mine and all(conf is not None for conf, _ in mine):
                pops[("r", names[t])] = Population(len(mine), sum(float(conf) for conf, _ in mine))
        budget = 0
        for dname in designs:
            if dname == "stratified":
                dspec = ReviewSpec(rate=min(1.0, rate))
            else:  # the same number of labels, spread uniformly
                dspec = ReviewSpec(
                    rate=min(1.0, budget / len(stream)), band_weights=[1, 1, 1, 1], novelty_boost=1.0,
                    quota_per_hour=1_000_000,
                )  # fmt: skip
            sampler = Sampler(dspec, random.Random(rng.random()))
            items = []
            for i, (tier, conf, correct, nov) in enumerate(stream):
                d = sampler.draw("r", names[tier], conf, nov, float(i))
                if d.sampled:
                    label = "correct" if correct else "incorrect"
                    items.append(SampledItem("r", names[tier], d.probability, label, 0.0, conf))
            if dname == "stratified":
                budget = len(items)
            labels_per_run[dname].append(len(items))
            for e in estimates(items, populations=pops):
                true = truth.get(e.tier)
                if e.tier == "*" or true is None:
                    continue
                for est in estimators:
                    if est == "hajek":
                        got = (e.accuracy, e.lo, e.hi)
                    elif e.difference is not None:
                        got = (e.difference.accuracy, e.difference.lo, e.difference.hi)
                    else:
                        continue
                    if got[0] is None or got[1] is None or got[2] is None:
                        continue
                    acc = per.setdefault(
                        (dname, est, e.tier), {"err": [], "covered": [], "width": [], "labels": []}
                    )
                    acc["err"].append(abs(got[0] - true))
                    acc["covered"].append(float(got[1] <= true <= got[2]))
                    acc["width"].append(got[2] - got[1])
                    acc["labels"].append(e.labels)
        if (run + 1) % 20 == 0:
            print(f"  run {run + 1}/{args.runs}", file=sys.stderr)
    share = {names[t]: sum(1 for row in table if row[0] == t) / len(table) for t in range(len(names))}
    accuracy = {
        names[t]: statistics.mean([row[2] for row in table if row[0] == t] or [0]) for t in range(len(names))
    }
    for dname in designs:
        rows: dict[str, Any] = {"labels_per_run": statistics.median(labels_per_run[dname])}
        for est in estimators:
            for t in names:
                p = per.get((dname, est, t))
                if not p:
                    continue
                errs = sorted(p["err"])
                rows[f"{est}:{t}"] = {
                    "traffic_share": share[t],
                    "accuracy": accuracy[t],
                    "median_labels": statistics.median(p["labels"]),
                    "median_abs_error_pts": 100 * statistics.median(errs),
                    "p90_abs_error_pts": 100 * errs[int(0.9 * (len(errs) - 1))],
                    "within_2pts": sum(e <= 0.02 for e in errs) / len(errs),
                    "coverage_95": statistics.mean(p["covered"]),
                    "median_width_pts": 100 * statistics.median(p["width"]),
                    "runs_with_labels": len(errs),
                }
        out["designs"][dname] = rows
    print(json.dumps(out, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


def _weights(
    spec: ReviewSpec, rows: list[tuple[int, float | None, bool, float]]
) -> list[tuple[float, float]]:
    """(band weight, novelty) per answer, as the sampler weighs it."""
    s = Sampler(spec)
    return [(s.stratum("r", str(tier), conf)[1], nov) for (tier, conf, _c, nov) in rows]


if __name__ == "__main__":
    run_main("review_estimate", main)
