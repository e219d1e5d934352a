"""``tierguard replay``: recorded outcomes through routing strategies; writes report.json and report.html.

Everything is fitted on the ``train`` split and reported on the ``test`` split.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..calibration import (
    DEFAULT_DELTA,
    NEVER_ACCEPTS,
    SelectionObjective,
    calibrate,
    evaluate,
    needs_fit,
)
from ..errors import UserError
from ..outcomes import Dataset, Row, load_dataset, warn_skipped
from ..policy import CascadePolicySpec, load_policy_spec
from . import strategies as st
from .report_html import cost_matched, equal_cost_label

STRATEGIES = ("capable-only", "pre-route-classifier", "allowlist", "cascade", "cascade+shadow")
THRESHOLD_GRID = (
    0.0,
    0.3,
    0.4,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.875,
    0.9,
    0.925,
    0.95,
    0.975,
    1.0,
)
ALLOWLIST_GRID = (-0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 1.0)


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[replay {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="recorded outcomes (JSONL, docs/outcomes-format.md)")
    parser.add_argument("--policy", required=True, help="CascadePolicy YAML (manifest or bare spec)")
    parser.add_argument("--out", required=True, help="directory for report.json and report.html")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, from: {', '.join(STRATEGIES)} (default: all)",
    )
    parser.add_argument(
        "--benchmark", action="append", default=None, help="only rows of this benchmark (repeatable)"
    )
    parser.add_argument(
        "--scenario",
        choices=("none", "drift", "rollout", "loop"),
        default="none",
        help="also run this scenario (rollout: the fitted policy through the operator's rollout gate; "
        "loop: review labels feeding tune after a shift)",
    )
    parser.add_argument(
        "--fit",
        choices=("auto", "always", "never"),
        default="auto",
        help="fit calibration+thresholds on train: when the policy has none (auto), always, or never",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="objective when fitting thresholds (and the allowlist's): accuracy >= capable tier's minus this",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help="the fitted policy's accuracy guarantee may fail with probability at most this "
        f"(default {DEFAULT_DELTA}; docs/guarantee.md)",
    )
    parser.add_argument(
        "--shadow-rate", type=float, default=0.05, help="share of accepted cheaper answers re-asked"
    )
    parser.add_argument("--seed", type=int, default=7)
    drift = parser.add_argument_group("drift scenario")
    drift.add_argument(
        "--drift-from", default="mmlu", help="benchmark before the shift (calibrated on its train)"
    )
    drift.add_argument("--drift-to", default="medmcqa", help="benchmark after the shift")
    drift.add_argument("--shift-at", type=int, default=10_000, help="requests before the shift")
    drift.add_argument("--horizon", type=int, default=100_000, help="requests after the shift")
    drift.add_argument("--review-rate", type=float, default=0.005, help="human-review sample of all answers")
    drift.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate per healthy stream")
    drift.add_argument("--runs", type=int, default=20, help="drift (and loop) replications")
    drift.add_argument(
        "--scenario-policy",
        choices=("fitted", "selected"),
        default="fitted",
        help="the cascade the drift and loop scenarios watch: as fitted by --fit (the certified "
        "policy), or selected on A's train rows without a guarantee (one that accepts cheaper "
        "answers when the certificate covers none)",
    )
    drift.add_argument(
        "--null-runs", type=int, default=200, help="healthy streams for the false-alarm calibration"
    )
    lp = parser.add_argument_group("loop scenario (shift as --drift-from/--drift-to/--shift-at/--horizon)")
    lp.add_argument("--loop-review-rate", type=float, default=0.01, help="review sampler's base rate")
    lp.add_argument("--tune-every", type=int, default=1_000, help="requests between tune runs")
    lp.add_argument(
        "--label-window", type=int, default=10_000, help="tune reads the labels of this many last requests"
    )
    lp.add_argument("--label-delay", type=int, default=0, help="requests until a sampled answer is labelled")
    lp.add_argument(
        "--tune-from",
        type=int,
        default=0,
        help="tune runs only after this many requests (e.g. the shift: tuning starts once drift is seen)",
    )
    lp.add_argument("--max-step", type=float, default=0.05, help="tune's largest threshold change per run")
    ro = parser.add_argument_group("rollout scenario")
    ro.add_argument(
        "--requests-per-interval", type=int, default=20_000, help="replayed requests per analysis interval"
    )
    ro.add_argument(
        "--rollout-resplits",
        type=int,
        default=0,
        help="also refit and roll out on this many exchangeable re-splits of train+test (false rollbacks)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _parse_strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise UserError(f"unknown strategies {bad or text!r}; choose from {', '.join(STRATEGIES)}")
    if "capable-only" not in names:
        names.insert(0, "capable-only")  # the baseline every saving is measured against
    return names


def _objective(args: argparse.Namespace) -> SelectionObjective:
    return SelectionObjective(max_accuracy_drop=args.max_accuracy_drop, delta=args.delta)


def _validate(args: argparse.Namespace) -> None:
    if not 0.0 < args.delta < 1.0:
        raise UserError("--delta must lie in (0, 1)")
    if not 0.0 <= args.max_accuracy_drop < 1.0:
        raise UserError("--max-accuracy-drop must lie in [0, 1) (a fraction: 0.01 is one point)")
    if not 0.0 <= args.shadow_rate <= 1.0:
        raise UserError("--shadow-rate must lie in [0, 1]")
    if not 0.0 < args.review_rate <= 1.0:
        raise UserError("--review-rate must lie in (0, 1]")
    if not 0.0 < args.alpha < 1.0:
        raise UserError("--alpha must lie in (0, 1)")
    if args.rollout_resplits < 0:
        raise UserError("--rollout-resplits must not be negative")
    if not 0.0 < args.loop_review_rate <= 1.0:
        raise UserError("--loop-review-rate must lie in (0, 1]")
    if not 0.0 < args.max_step <= 1.0:
        raise UserError("--max-step must lie in (0, 1]")
    if args.label_delay < 0 or args.tune_from < 0:
        raise UserError("--label-delay and --tune-from must not be negative")
    for name in (
        "shift_at", "horizon", "runs", "null_runs", "requests_per_interval", "tune_every", "label_window",
    ):  # fmt: skip
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")


def fit_spec(
    spec: CascadePolicySpec,
    train: Sequence[Row],
    mode: str,
    objective: SelectionObjective,
    progress: Progress,
    label: str,
) -> tuple[CascadePolicySpec, dict[str, Any]]:
    if mode == "never" or (mode == "auto" and not needs_fit(spec)):
        return spec, {"source": "policy file", "rows": 0}
    if not train:
        raise UserError(f"{label}: the policy needs fitting but there are no train rows")
    progress(f"{label}: fitting calibration and thresholds on {len(train)} train rows")
    cal = calibrate(spec, train, objective)
    base = cal.baseline
    if cal.capable_only:
        progress(f"{label}: {NEVER_ACCEPTS}")
    return cal.spec, {
        "source": "fitted on train",
        "rows": len(train),
        "objective": objective.describe(),
        "train_accuracy": cal.chosen.accuracy,
        "train_capable_accuracy": base.accuracy,
        "train_savings": cal.savings,
        "capable_only": cal.capable_only,
        "guarantee": cal.certificate.to_json() if cal.certificate is not None else None,
        "warnings": cal.warnings,
        "combinations_routed": len(cal.results),
        "brier_raw": cal.brier_raw,
        "brier_calibrated": cal.brier_calibrated,
    }


def policy_summary(spec: CascadePolicySpec) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "model": t.model,
            "threshold": None if i == len(spec.tiers) - 1 else t.confidence.threshold,
            "calibration": t.confidence.calibration,
        }
        for i, t in enumerate(spec.tiers)
    ]


def _interp(points: Sequence[dict[str, Any]], cost: float, key: str) -> float | None:
    """``key`` at ``cost`` on the upper envelope of ``points`` (linear between neighbours)."""
    pts = sorted((p["cost_per_query_usd"], p[key]) for p in points if p.get(key) is not None)
    if not pts or cost < pts[0][0] or cost > pts[-1][0]:
        return None
    env: list[tuple[float, float]] = []
    for c, v in pts:  # keep only points better than every cheaper one (a Pareto frontier)
        if not env or v > env[-1][1]:
            env.append((c, v))
    best = env[0][1]
    for (c0, v0), (c1, v1) in itertools.pairwise(env):
        if c0 <= cost <= c1:
            return v0 + (v1 - v0) * (cost - c0) / (c1 - c0) if c1 > c0 else max(v0, v1)
        best = v1
    return max(v for c, v in env if c <= cost) if env else best


@dataclass(frozen=True)
class Scoring:
    """How a strategy's routing is scored: on the test rows, against the capable tier's cost."""

    test: Sequence[Row]
    n_tiers: int
    capable_cost: float

    def metrics(self, r: st.Routing) -> dict[str, Any]:
        return st.metrics(self.test, r, self.n_tiers, self.capable_cost)

    def point(self, r: st.Routing) -> dict[str, Any]:
        """A frontier point: the headline numbers and the per-tier shares."""
        full = self.metrics(r)
        keys = ("accuracy", "cost_per_query_usd", "savings_vs_capable", "long_tail_accuracy")
        return {k: full[k] for k in keys} | {"shares": [p["share"] for p in full["per_tier"]]}


@dataclass
class PreRouting:
    """The pre-route classifiers' results: matched to the cascade's shares and to its cost."""

    results: list[dict[str, Any]] = field(default_factory=list)
    frontiers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    equal_cost: dict[str, Any] | None = None


def pre_route(
    sc: Scoring, train: Sequence[Row], casc_m: dict[str, Any], progress: Progress, *, frontiers: bool
) -> PreRouting:
    """The TF-IDF + logistic-regression pre-router (and the embedding k-NN one when its model is
    installed), each at the cascade's per-tier shares and at its mean cost."""
    out = PreRouting()
    shares = [p["share"] for p in casc_m["per_tier"]]
    progress(f"pre-route classifier: fitting TF-IDF + logistic regression on {len(train)} train rows")
    routers: list[st.PreRouter] = [st.PreRouter(sc.n_tiers).fit(train)]
    encoder, why = st.load_embedding_encoder()
    if encoder is None:
        out.notes.append(why)
    else:
        progress("pre-route classifier: embedding k-NN variant")
        routers.append(st.EmbeddingPreRouter(sc.n_tiers, encoder).fit(train))
    for router in routers:
        suffix = "" if router.kind == "tfidf-logreg" else f" ({router.kind})"
        scores = router.scores(sc.test)
        r = st.preroute_at_shares(scores, sc.test, shares, f"pre-route-classifier{suffix}")
        r.notes = {"model": router.kind, "matched": "per-tier shares of the cascade"}
        out.results.append(sc.metrics(r))
        rc = st.preroute_at_cost(
            scores, sc.test, casc_m["cost_per_query_usd"], f"pre-route-classifier@cost{suffix}"
        )
        rc.notes = {"model": router.kind, "matched": "mean cost of the cascade", **rc.notes}
        eq = sc.metrics(rc)
        out.results.append(eq)
        if frontiers:
            grid = sorted({i / 40 for i in range(41)})
            out.frontiers[f"pre-route-classifier{suffix}"] = [
                sc.point(st.preroute_at_threshold(scores, sc.test, tau, "p")) | {"tau": tau} for tau in grid
            ]
        if router.kind == "tfidf-logreg":
            out.equal_cost = equal_cost(casc_m, eq)
    return out


def equal_cost(casc_m: dict[str, Any], eq: dict[str, Any]) -> dict[str, Any]:
    """The cascade beside the pre-router matched to its mean cost."""
    tails = (casc_m["long_tail_accuracy"], eq["long_tail_accuracy"])
    return {
        "cost_matched": cost_matched(casc_m["cost_per_query_usd"], eq["cost_per_query_usd"]),
        "cascade_cost": casc_m["cost_per_query_usd"],
        "pre_route_cost": eq["cost_per_query_usd"],
        "cascade_accuracy": casc_m["accuracy"],
        "pre_route_accuracy": eq["accuracy"],
        "accuracy_gap": casc_m["accuracy"] - eq["accuracy"],
        "cascade_long_tail": tails[0],
        "pre_route_long_tail": tails[1],
        "long_tail_gap": tails[0] - tails[1] if tails[0] is not None and tails[1] is not None else None,
    }


def allowlist_frontier(sc: Scoring, spec: CascadePolicySpec, train: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        sc.point(st.allowlist(spec, sc.test, st.allowlist_table(train, sc.n_tiers, d), d))
        | {"max_accuracy_drop": d}
        for d in ALLOWLIST_GRID
    ]


def _strategy_order(result: dict[str, Any]) -> int:
    order = {n: i for i, n in enumerate(STRATEGIES)}
    return order.get(result["strategy"].split("@")[0].split(" ")[0], 99)


def evaluate_strategies(
    spec: CascadePolicySpec,
    train: Sequence[Row],
    test: Sequence[Row],
    names: Sequence[str],
    args: argparse.Namespace,
    progress: Progress,
    *,
    frontiers: bool = True,
    capable_only: bool = False,
) -> dict[str, Any]:
    """``capable_only``: the fitted policy is the capable tier alone (nothing cheaper certified)."""
    n_t = len(spec.tiers)
    cap = st.capable_only(spec, test)
    sc = Scoring(test, n_t, sum(cap.cost) / len(test))
    results: list[dict[str, Any]] = [sc.metrics(cap)]
    casc = (
        dataclasses.replace(cap, name="cascade", notes={"capable_only": True})
        if capable_only
        else st.cascade(spec, test)
    )
    casc_m = sc.metrics(casc)
    pre = (
        pre_route(sc, train, casc_m, progress, frontiers=frontiers)
        if "pre-route-classifier" in names
        else PreRouting()
    )
    results += pre.results
    fr = pre.frontiers
    if "allowlist" in names:
        table = st.allowlist_table(train, n_t, args.max_accuracy_drop)
        results.append(sc.metrics(st.allowlist(spec, test, table, args.max_accuracy_drop)))
        if frontiers:
            fr["allowlist"] = allowlist_frontier(sc, spec, train)
    if "cascade" in names:
        results.append(casc_m)
    if "cascade+shadow" in names:
        results.append(sc.metrics(st.with_shadow(casc, test, n_t, args.shadow_rate, args.seed)))
    if frontiers:
        progress("frontiers: sweeping the cascade's thresholds")
        fr["cascade"] = st.cascade_frontier(spec, test, THRESHOLD_GRID, sc.point)
        fr["single-tier"] = [
            sc.point(st.single_tier(spec, test, t)) | {"tier": spec.tiers[t].name} for t in range(n_t)
        ]
        if pre.equal_cost is not None and "pre-route-classifier" in fr:
            for key in ("accuracy", "long_tail_accuracy"):
                pre.equal_cost[f"pre_route_frontier_{key}_at_cascade_cost"] = _interp(
                    fr["pre-route-classifier"], casc_m["cost_per_query_usd"], key
                )
    results.sort(key=_strategy_order)
    return {
        "train_rows": len(train),
        "test_rows": len(test),
        "strategies": results,
        "frontiers": fr,
        "equal_cost": pre.equal_cost,
        "notes": pre.notes,
    }


@dataclass(frozen=True)
class Shift:
    """The rows on both sides of a scenario's shift and the cascade that answers them."""

    train_a: Sequence[Row]
    test_a: Sequence[Row]
    test_b: Sequence[Row]
    spec: CascadePolicySpec  # the cascade as it routes (capable-only: no cheaper tier ever accepts)
    fit_info: dict[str, Any]


def shift_rows(
    spec: CascadePolicySpec, ds: Dataset, args: argparse.Namespace, progress: Progress, label: str
) -> Shift:
    a, b = args.drift_from, args.drift_to
    have = ds.benchmarks()
    for bench in (a, b):
        if bench not in have:
            raise UserError(
                f"{label} scenario: no usable rows of benchmark {bench!r} (have: {', '.join(have) or 'none'})"
            )
    train_a = ds.select(split="train", benchmark=a)
    test_a = ds.select(split="test", benchmark=a)
    test_b = ds.select(split="test", benchmark=b)
    if not test_a or not test_b:
        raise UserError(f"{label} scenario: need test rows of both {a!r} and {b!r}")
    if args.scenario_policy == "selected":
        from ..calibration import selected_on_train

        if not train_a:
            raise UserError(f"{label} scenario: --scenario-policy selected needs train rows of {a!r}")
        progress(f"{label} ({a}): selecting thresholds on {len(train_a)} train rows without a guarantee")
        fitted = selected_on_train(spec, train_a, args.max_accuracy_drop)
        fit_info: dict[str, Any] = {
            "source": "selected on train without a guarantee (--scenario-policy selected)",
            "rows": len(train_a),
            "capable_only": False,
        }
    else:
        fitted, fit_info = fit_spec(spec, train_a, args.fit, _objective(args), progress, f"{label} ({a})")
        if fit_info.get("capable_only"):
            fitted = never_accepts(fitted)
    return Shift(train_a, test_a, test_b, fitted, fit_info)


def never_accepts(spec: CascadePolicySpec) -> CascadePolicySpec:
    """``spec`` with no cheaper tier ever accepting: the capable-only policy as the cascade routes it."""
    from ..calibration import with_confidence

    cheaper = len(spec.tiers) - 1
    zero: list[tuple[float, float]] = [(0.0, 0.0), (1.0, 0.0)]  # every raw confidence maps to 0
    return with_confidence(
        spec,
        calibrations=[zero] * cheaper + [None],
        thresholds=[1.0] * cheaper + [spec.tiers[-1].confidence.threshold],
    )


def run_drift(
    spec: CascadePolicySpec, ds: Dataset, args: argparse.Namespace, names: Sequence[str], progress: Progress
) -> dict[str, Any]:
    from .monitors import DriftConfig, Scenario

    a, b = args.drift_from, args.drift_to
    sh = shift_rows(spec, ds, args, progress, "drift")
    train_a, test_a, test_b, fitted, fit_info = sh.train_a, sh.test_a, sh.test_b, sh.spec, sh.fit_info
    # Quality before and after the shift, per strategy (all fitted on A's train rows).
    only = bool(fit_info.get("capable_only"))
    before = evaluate_strategies(
        fitted, train_a, test_a, names, args, progress, frontiers=False, capable_only=only
    )
    after = evaluate_strategies(
        fitted, train_a, test_b, names, args, progress, frontiers=False, capable_only=only
    )
    quality = []
    for x, y in zip(before["strategies"], after["strategies"], strict=True):
        quality.append(
            {
                "strategy": x["strategy"],
                "accuracy_before": x["accuracy"],
                "accuracy_after": y["accuracy"],
                "drop": x["accuracy"] - y["accuracy"],
                "cost_before": x["cost_per_query_usd"],
                "cost_after": y["cost_per_query_usd"],
            }
        )
    cfg = DriftConfig(
        source=a,
        target=b,
        shift_at=args.shift_at,
        horizon=args.horizon,
        review_rate=args.review_rate,
        shadow_rate=args.shadow_rate,
        alpha=args.alpha,
        null_runs=args.null_runs,
        runs=args.runs,
        seed=args.seed,
    )
    progress(f"drift {a} -> {b}: calibrating monitor thresholds on {cfg.null_runs} healthy streams")
    scen = Scenario(fitted, test_a, test_b, train_a, cfg)
    scen.calibrate(progress=not args.quiet)
    progress(f"drift {a} -> {b}: {cfg.runs} runs")
    mon = scen.run(progress=False)
    return {"fit": fit_info, "policy": policy_summary(fitted), "quality": quality, **mon}


def run_loop(
    spec: CascadePolicySpec, ds: Dataset, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    from .loop import Loop, LoopConfig

    sh = shift_rows(spec, ds, args, progress, "loop")
    if sh.fit_info.get("capable_only"):
        raise UserError(
            f"loop scenario: the fitted policy is capable-only on {args.drift_from!r} ({NEVER_ACCEPTS}); "
            "there are no cheaper answers to review or tune. Give a policy with thresholds (--fit never) "
            "or --scenario-policy selected"
        )
    cfg = LoopConfig(
        source=args.drift_from,
        target=args.drift_to,
        shift_at=args.shift_at,
        horizon=args.horizon,
        review_rate=args.loop_review_rate,
        tune_every=args.tune_every,
        label_window=args.label_window,
        label_delay=args.label_delay,
        max_step=args.max_step,
        max_drop=args.max_accuracy_drop,
        tune_from=args.tune_from,
        shadow_rate=args.shadow_rate,
        runs=args.runs,
        seed=args.seed,
    )
    progress(f"loop {cfg.source} -> {cfg.target}: {cfg.runs} runs of {cfg.shift_at + cfg.horizon} requests")
    out = Loop(sh.spec, sh.test_a, sh.test_b, sh.train_a, cfg).run(progress=not args.quiet)
    return {"fit": sh.fit_info, "policy": policy_summary(sh.spec), **out}


def reliability_report(
    spec: CascadePolicySpec, fitted: CascadePolicySpec, train: Sequence[Row], test: Sequence[Row]
) -> dict[str, Any]:
    """Per tier: out-of-fold reliability on train, and the policy's maps on test (ECE, bins)."""
    from ..reliability import on_rows, oof_reliability

    def js(items: Sequence[Any]) -> list[dict[str, Any] | None]:
        return [None if r is None else r.to_json() for r in items]

    return {
        "train_out_of_fold": js(oof_reliability(spec, train)) if train else [],
        "test": js(on_rows(fitted, test)),
    }


def run_rollout(
    spec: CascadePolicySpec,
    train: Sequence[Row],
    test: Sequence[Row],
    args: argparse.Namespace,
    progress: Progress,
) -> dict[str, Any]:
    """The fitted (certified) policy and, for contrast, the policy selected on train without a
    guarantee, each rolled out on the test traffic; then refits on exchangeable re-splits."""
    import random

    from ..calibration import selected_on_train
    from .rollout_sim import rollout_runs

    if not train:
        raise UserError("rollout scenario: needs train rows to fit the policy on")
    objective = _objective(args)
    eps = args.max_accuracy_drop
    shadow = spec.proxy.shadow_rate or args.shadow_rate
    common = {
        "eps": eps,
        "requests_per_interval": args.requests_per_interval,
        "shadow_rate": shadow,
        "runs": args.runs,
        "seed": args.seed,
    }
    policies = []
    cal = calibrate(spec, train, objective)
    if cal.capable_only:
        policies.append({"policy": "certified", "capable_only": True, "note": NEVER_ACCEPTS})
    else:
        progress(f"rollout: certified policy, {args.runs} runs on {len(test)} test rows")
        policies.append(rollout_runs("certified", cal.spec, train, test, **common))
    progress(f"rollout: policy selected on train without a guarantee, {args.runs} runs")
    policies.append(
        rollout_runs(
            "selected on train (no guarantee)", selected_on_train(spec, train, eps), train, test, **common
        )
    )
    resplits: list[dict[str, Any]] = []
    pool = [*train, *test]
    rng = random.Random(args.seed)
    for i in range(args.rollout_resplits):
        rows = list(pool)
        rng.shuffle(rows)
        tr, te = rows[: len(train)], rows[len(train) :]
        c = calibrate(spec, tr, objective)
        if c.capable_only:
            resplits.append({"split": i, "capable_only": True})
            continue
        r = rollout_runs("certified", c.spec, tr, te, **{**common, "runs": 1, "seed": args.seed + i})
        resplits.append(
            {
                "split": i,
                "capable_only": False,
                "test_gap": r["test_gap"],
                "promoted": r["promoted"] == 1,
                "rolled_back": r["rolled_back"] == 1,
                "requests": r["median_requests_to_decision"],
            }
        )
        if (i + 1) % 10 == 0:
            progress(f"rollout: {i + 1}/{args.rollout_resplits} re-splits")
    good = [x for x in resplits if not x["capable_only"] and x["test_gap"] <= eps]
    false_rb = sum(x["rolled_back"] for x in good)
    rate = false_rb / len(good) if good else None
    return {
        "config": {**common, "rollout": spec.rollout.to_yaml_dict()},
        "policies": policies,
        "resplits": {
            "splits": len(resplits),
            "capable_only": sum(x["capable_only"] for x in resplits),
            "good": len(good),
            "false_rollbacks": false_rb,
            "false_rollback_rate": rate,
            "standard_error": (rate * (1 - rate) / len(good)) ** 0.5 if good and rate is not None else None,
            "details": resplits,
        },
    }


def run(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    names = _parse_strategies(args.strategies)
    _validate(args)
    policy_name, spec = load_policy_spec(args.policy)
    wanted = None
    if args.benchmark:
        wanted = list(args.benchmark)
        if args.scenario in ("drift", "loop"):
            wanted += [args.drift_from, args.drift_to]
    progress(f"loading {args.data}")
    ds = load_dataset(args.data, spec, strict=args.strict, benchmarks=wanted)
    warn_skipped(ds, "tierguard replay")
    progress(
        f"{len(ds.rows)} usable rows of {ds.total_records} "
        f"({len(ds.malformed)} malformed lines, {sum(ds.skipped.values())} rows skipped)"
    )
    main_rows = [r for r in ds.rows if not args.benchmark or r.benchmark in args.benchmark]
    train = [r for r in main_rows if r.split == "train"]
    test = [r for r in main_rows if r.split == "test"]
    if not test:
        from ..nodata import explain_no_rows

        raise UserError(explain_no_rows(args.data, spec, benchmarks=args.benchmark, split="test"))
    fitted, fit_info = fit_spec(spec, train, args.fit, _objective(args), progress, "policy")
    capable = bool(fit_info.get("capable_only"))
    if capable:
        print(f"tierguard replay: {NEVER_ACCEPTS}", file=sys.stderr)
    elif fit_info["source"] == "fitted on train":
        fit_info["test_check"] = evaluate(fitted, test).__dict__
    for w in fit_info.get("warnings", []):
        print(f"tierguard replay: {w}", file=sys.stderr)
    if ("pre-route-classifier" in names or "allowlist" in names) and not train:
        raise UserError("pre-route-classifier and allowlist need train rows; leave them out of --strategies")
    progress(f"strategies on {len(test)} test rows: {', '.join(names)}")
    main_eval = evaluate_strategies(fitted, train, test, names, args, progress, capable_only=capable)
    report: dict[str, Any] = {
        "tool": "tierguard replay",
        "version": __version__,
        "policy_name": policy_name,
        "policy_file": args.policy,
        "benchmarks": sorted({r.benchmark or "-" for r in main_rows}),
        "data": ds.summary(),
        "fit": fit_info,
        "policy": policy_summary(fitted),
        **main_eval,
        "drift": None,
        "rollout": None,
        "loop": None,
        "reliability": reliability_report(spec, fitted, train, test),
    }
    if args.scenario == "drift":
        report["drift"] = run_drift(spec, ds, args, names, progress)
    if args.scenario == "rollout":
        report["rollout"] = run_rollout(spec, train, test, args, progress)
    if args.scenario == "loop":
        report["loop"] = run_loop(spec, ds, args, progress)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create directory: {err.strerror}") from None
    report["elapsed_seconds"] = round(time.perf_counter() - progress.t0, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    from .report_html import render

    (out / "report.html").write_text(render(report))
    progress(f"wrote {out / 'report.json'} and {out / 'report.html'}")
    print(text_summary(report))
    return 0


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:.3e}"


def text_summary(report: dict[str, Any]) -> str:
    lines = [
        f"{'strategy':<44}{'accuracy':>9}{'long tail':>10}{'$/query':>11}{'savings':>9}{'escalated':>10}",
    ]
    for s in report["strategies"]:
        lines.append(
            f"{s['strategy']:<44}{_fmt(s['accuracy']):>9}{_fmt(s['long_tail_accuracy']):>10}"
            f"{_fmt(s['cost_per_query_usd'], False):>11}{_fmt(s['savings_vs_capable']):>9}"
            f"{_fmt(s['escalation_rate']):>10}"
        )
    eq = report.get("equal_cost")
    if eq:
        lines.append(
            f"{equal_cost_label(eq)}: cascade - pre-route = {eq['accuracy_gap'] * 100:+.1f} points overall, "
            + (
                f"{eq['long_tail_gap'] * 100:+.1f} on the long tail"
                if eq["long_tail_gap"] is not None
                else ""
            )
        )
    d = report.get("drift")
    if d:
        lines.append(
            f"drift {d['config']['source']} -> {d['config']['target']} at request {d['config']['shift_at']}:"
        )
        for mo in d["monitors"]:
            md = mo["median_delay"]
            sp = mo["speedup_vs_aggregate"]
            fired = "not fired" if md is None else str(int(md))
            lines.append(
                f"  {mo['name']:<28} median requests to fire: {fired:>10}"
                f"  speed-up vs aggregate: {'-' if sp is None else f'{sp:.1f}x'}"
            )
    lo = report.get("loop")
    if lo:
        mb = lo["median_back_after"]
        lc, st_after, tuned = lo["config"], lo["static_after"], lo["tuned_final"]
        lines.append(
            f"loop {lc['source']} -> {lc['target']} at request {lc['shift_at']} "
            f"(target of accepted answers: {lo['target_basis']}):"
        )
        lines.append(
            f"  after the shift: capable {lo['capable_accuracy_after']:.1%}; "
            f"static {st_after['accuracy']:.1%} (savings {st_after['savings']:.1%}); "
            f"tuned {tuned['accuracy']:.1%} (savings {tuned['savings']:.1%})"
        )
        lines.append(
            "  tuned back within "
            f"{lo['config']['max_drop'] * 100:g} point(s) of capable: "
            + ("not in the median run" if mb is None else f"median {int(mb)} requests after the shift")
            + f" ({lo['never_back']}/{len(lo['back_after'])} runs never)"
        )
    ro = report.get("rollout")
    if ro:
        lines.append(
            f"rollout on test traffic ({ro['config']['requests_per_interval']} requests per interval):"
        )
        for p in ro["policies"]:
            if p.get("capable_only"):
                lines.append(f"  {p['policy']}: capable-only, nothing to roll out")
                continue
            lines.append(
                f"  {p['policy']:<34} test gap {p['test_gap'] * 100:+.1f} points: promoted {p['promoted']}/"
                f"{p['runs']}, rolled back {p['rolled_back']}/{p['runs']}"
                + (f" at weight {p['rolled_back_at_weights']}%" if p["rolled_back"] else "")
                + f", median {p['median_requests_to_decision']} requests to the decision"
            )
        rs = ro["resplits"]
        if rs["splits"]:
            fr = rs["false_rollback_rate"]
            lines.append(
                f"  re-splits: {rs['splits']}, capable-only {rs['capable_only']}, good {rs['good']}, "
                f"false rollbacks {rs['false_rollbacks']}"
                + (f" ({fr:.1%} +- {rs['standard_error']:.1%})" if fr is not None else "")
            )
    for n in report.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)
