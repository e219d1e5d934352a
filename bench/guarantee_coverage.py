"""The calibrate guarantee on exchangeable re-splits of recorded outcomes (issue 7): coverage and savings.

For each configuration, every usable row of the benchmark (train and test pooled) is shuffled
and split again, the train part as large as the shipped train split; ``tierguard calibrate``'s
code (:func:`tierguard.calibrate.calibrate`) fits and certifies a policy on it, and the policy is
scored on the rest with the proxy's decision code. Per split:

- **test gap**: capable-tier accuracy minus cascade accuracy on the held-out rows;
- **pool gap**: the same on every pooled row, the finite population the splits are drawn from.
  The guarantee is about the population, so "pool gap > eps" is the failure it bounds by delta;
  "test gap > eps" adds the held-out rows' own sampling noise on top;
- **savings** on the held-out rows (0 when capable-only is proposed: nothing is deployed).

Coverage is reported with its Monte-Carlo standard error sqrt(delta (1 - delta) / splits).

    python bench/guarantee_coverage.py --data ../shared/data/zellinger_llm_cascades/cascade_outcomes.jsonl \\
        --splits 200 --savings-splits 50 --json-out /tmp/guarantee.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

from benchlib import DEFAULT_DATA, BenchError, machine_info, run_main  # noqa: E402
from tierguard.calibration import SelectionObjective, calibrate, evaluate  # noqa: E402
from tierguard.outcomes import Row, load_dataset  # noqa: E402
from tierguard.policy import load_policy_spec  # noqa: E402

CONFIGS = (
    ("MMLU gpt-4o-mini -> gpt-4o", "mmlu-2tier", "mmlu"),
    ("MMLU gpt-4o-mini -> llama3.1-70b -> gpt-4o", "mmlu-3tier", "mmlu"),
    ("MedMCQA gpt-4o-mini -> llama3.1-70b -> gpt-4o", "medmcqa-3tier", "medmcqa"),
)


def gap(rows: list[Row], answered: list[int]) -> float:
    return sum(int(r.correct[-1]) - int(r.correct[k]) for r, k in zip(rows, answered, strict=True)) / len(
        rows
    )


def one_split(
    spec: Any, train: list[Row], test: list[Row], pool: list[Row], eps: float, delta: float
) -> dict[str, Any]:
    from tierguard.calibration import project
    from tierguard.cascade import route

    cal = calibrate(spec, train, SelectionObjective(max_accuracy_drop=eps, delta=delta))
    if cal.capable_only:
        return {"certified": False, "savings": 0.0, "train_savings": 0.0, "test_gap": 0.0, "pool_gap": 0.0}
    keep = [i for i, t in enumerate(spec.tiers) if t.name in {x.name for x in cal.spec.tiers}]
    te, po = project(test, keep), project(pool, keep)
    ev = evaluate(cal.spec, te)
    cap = sum(r.cost[-1] for r in te) / len(te)
    return {
        "certified": True,
        "savings": 1.0 - ev.cost / cap,
        "train_savings": cal.savings,
        "test_gap": gap(te, [route(cal.spec, r.raw).answered_by for r in te]),
        "pool_gap": gap(po, [route(cal.spec, r.raw).answered_by for r in po]),
    }


def run_config(
    label: str,
    policy: str,
    bench: str,
    data: str,
    eps: float,
    deltas: list[float],
    splits: int,
    savings_splits: int,
    coverage_delta: float,
    seed: int,
) -> dict[str, Any]:
    _, spec = load_policy_spec(REPO / "examples" / "replay" / f"{policy}.yaml")
    ds = load_dataset(data, spec, benchmarks=[bench])
    pool = list(ds.rows)
    n_train = sum(1 for r in pool if r.split == "train")
    if not n_train or n_train >= len(pool):
        raise BenchError(f"{label}: need train and test rows (have {len(pool)}, train {n_train})")
    out: dict[str, Any] = {
        "label": label,
        "rows": len(pool),
        "train_rows": n_train,
        "eps": eps,
        "by_delta": {},
    }
    t0 = time.perf_counter()
    for delta in deltas:
        n_splits = splits if delta == coverage_delta else savings_splits
        rng = random.Random(seed)
        results = []
        for s in range(n_splits):
            rows = list(pool)
            rng.shuffle(rows)
            results.append(one_split(spec, rows[:n_train], rows[n_train:], pool, eps, delta))
            if (s + 1) % 25 == 0:
                print(
                    f"  {label} delta={delta}: {s + 1}/{n_splits} splits ({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
        first = results[:savings_splits]
        viol_pool = sum(r["pool_gap"] > eps for r in results)
        viol_test = sum(r["test_gap"] > eps for r in results)
        out["by_delta"][str(delta)] = {
            "splits": n_splits,
            "certified_share": sum(r["certified"] for r in results) / n_splits,
            "mean_savings": statistics.mean(r["savings"] for r in first),
            "savings_splits": len(first),
            "mean_train_savings": statistics.mean(r["train_savings"] for r in first),
            "pool_violations": viol_pool,
            "test_violations": viol_test,
            "pool_violation_share": viol_pool / n_splits,
            "test_violation_share": viol_test / n_splits,
            "mc_error": math.sqrt(delta * (1 - delta) / n_splits),
            "worst_test_gap": max(r["test_gap"] for r in results),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--deltas", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--coverage-delta", type=float, default=0.1, help="delta run with --splits splits")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--savings-splits", type=int, default=50)
    ap.add_argument("--configs", default="all", help="comma-separated policy names, or all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise BenchError(f"{args.data}: no such file (pass --data)")
    deltas = [float(x) for x in args.deltas.split(",") if x.strip()]
    if args.coverage_delta not in deltas:
        deltas.append(args.coverage_delta)
    chosen = [c for c in CONFIGS if args.configs == "all" or c[1] in args.configs.split(",")]
    report: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "configs": []}
    for label, policy, bench in chosen:
        report["configs"].append(
            run_config(
                label,
                policy,
                bench,
                args.data,
                args.eps,
                deltas,
                args.splits,
                args.savings_splits,
                args.coverage_delta,
                args.seed,
            )
        )
    print(f"eps = {args.eps * 100:g} point(s); pool/test violation = gap to the capable tier > eps")
    print(
        f"{'configuration':<48}{'delta':>6}{'splits':>7}{'certified':>10}{'savings':>9}"
        f"{'pool viol':>10}{'test viol':>10}{'MC err':>8}"
    )
    for c in report["configs"]:
        for d, r in c["by_delta"].items():
            print(
                f"{c['label']:<48}{d:>6}{r['splits']:>7}{r['certified_share']:>10.0%}{r['mean_savings']:>9.1%}"
                f"{r['pool_violation_share']:>10.1%}{r['test_violation_share']:>10.1%}{r['mc_error']:>8.1%}"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main("guarantee_coverage", main)
