"""How well the stratified review sample estimates per-tier accuracy on recorded data (issue 13).

The MMLU 3-tier cascade (examples/replay/mmlu-3tier.yaml) is calibrated on MMLU train rows
(``tierguard.calibrate``, the default objective), then ``--runs`` streams of ``--requests``
requests are drawn with replacement from the MMLU test rows at one request per second. Every
answer goes through the stratified sampler (:class:`tierguard.review.sampling.Sampler`, default
bands and weights, novelty against the train prompts, ``--rate``, the default hourly quota); every
sampled answer is labelled with its recorded correctness. Per tier, the inclusion-weighted
accuracy and its 95% interval (:func:`tierguard.review.estimate.estimates`) are compared with the
stream's true accuracy of that tier: the share of runs within +-2 points, the median and 90th
percentile absolute error, and the interval's coverage. A uniform sample with the same label
budget (every weight 1, no novelty, its rate set to the stratified sample's labels / requests of
the same run) is run alongside.

    python bench/review_estimate.py --runs 100 --json-out /tmp/review-estimate.json
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
from tierguard.calibration import calibrate
from tierguard.cascade import route
from tierguard.outcomes import load_dataset
from tierguard.policy import ReviewSpec, load_policy_spec
from tierguard.review.estimate import SampledItem, estimates
from tierguard.review.novelty import NoveltyReference
from tierguard.review.sampling import Sampler

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--policy", default=str(REPO / "examples" / "replay" / "mmlu-3tier.yaml"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise BenchError(f"{args.data}: no such file (--data)")
    _, spec = load_policy_spec(args.policy)
    ds = load_dataset(args.data, spec, benchmarks=["mmlu"])
    train, test = ds.select(split="train"), ds.select(split="test")
    cal = calibrate(spec, train)
    fitted = cal.spec
    names = [t.name for t in fitted.tiers]
    ref = NoveltyReference.build(r.prompt for r in train)
    # per test row: answering tier, its calibrated confidence, correct, novelty
    table = []
    for r in test:
        rt = route(fitted, r.raw)
        j = rt.judgements[-1]
        table.append((rt.answered_by, j.confidence, r.correct[rt.answered_by], ref.novelty(r.prompt)))
    designs = ("stratified", "uniform")
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "tiers": names, "designs": {}}
    per: dict[str, dict[str, dict[str, list[float]]]] = {
        d: {t: {"err": [], "covered": [], "labels": []} for t in [*names, "*"]} for d in designs
    }
    for run in range(args.runs):
        stream = [table[rng.randrange(len(table))] for _ in range(args.requests)]
        truth = {}
        for t in range(len(names)):
            ys = [c for (tier, _conf, c, _n) in stream if tier == t]
            truth[names[t]] = sum(ys) / len(ys) if ys else None
        budget = 0
        for dname in designs:
            if dname == "stratified":
                dspec = ReviewSpec(rate=args.rate)
            else:  # the same number of labels, spread uniformly
                dspec = ReviewSpec(
                    rate=min(1.0, budget / len(stream)), band_weights=[1, 1, 1, 1], novelty_boost=1.0,
                    quota_per_hour=1_000_000,
                )
            sampler = Sampler(dspec, random.Random(rng.random()))
            items = []
            for i, (tier, conf, correct, nov) in enumerate(stream):
                d = sampler.draw("r", names[tier], conf, nov, float(i))
                if d.sampled:
                    items.append(SampledItem("r", names[tier], d.probability, "correct" if correct else "incorrect"))
            if dname == "stratified":
                budget = len(items)
            per[dname]["*"]["labels"].append(len(items))
            for e in estimates(items):
                if e.tier == "*" or e.accuracy is None or truth.get(e.tier) is None:
                    continue
                true = truth[e.tier]
                assert true is not None and e.lo is not None and e.hi is not None
                per[dname][e.tier]["err"].append(abs(e.accuracy - true))
                per[dname][e.tier]["covered"].append(float(e.lo <= true <= e.hi))
                per[dname][e.tier]["labels"].append(e.labels)
        if (run + 1) % 10 == 0:
            print(f"  run {run + 1}/{args.runs}", file=sys.stderr)
    share = {names[t]: sum(1 for row in table if row[0] == t) / len(table) for t in range(len(names))}
    accuracy = {names[t]: statistics.mean([row[2] for row in table if row[0] == t] or [0]) for t in range(len(names))}
    for dname in designs:
        rows = {}
        for t in names:
            p = per[dname][t]
            if not p["err"]:
                continue
            errs = sorted(p["err"])
            rows[t] = {
                "traffic_share": share[t],
                "accuracy": accuracy[t],
                "median_labels": statistics.median(p["labels"]),
                "median_abs_error_pts": 100 * statistics.median(errs),
                "p90_abs_error_pts": 100 * errs[int(0.9 * (len(errs) - 1))],
                "within_2pts": sum(e <= 0.02 for e in errs) / len(errs),
                "coverage_95": statistics.mean(p["covered"]),
                "runs_with_labels": len(errs),
            }
        rows["labels_per_run"] = statistics.median(per[dname]["*"]["labels"])
        out["designs"][dname] = rows
    print(json.dumps(out, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    run_main("review_estimate", main)
