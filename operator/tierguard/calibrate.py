"""``tierguard calibrate``: fit each tier's calibration map and choose thresholds on recorded
outcomes, and write the calibrated policy.

The fitting is :mod:`tierguard.calibration`'s (the objectives, the search, the drift references);
this module reads the data and the policy, reports, and writes the policy file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .calibration import (
    DEFAULT_CONFIDENCE,
    MAX_POINTS,
    MIN_REFERENCE_ROWS,
    NEVER_ACCEPTS,
    Calibration,
    SelectionObjective,
    calibrate,
)
from .errors import PolicyError, UserError
from .outcomes import load_dataset, warn_skipped
from .policy import CascadeSpec, load_policy_spec, load_yaml, parse_policy_spec

# --- the command -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="recorded outcomes (JSONL, docs/outcomes-format.md)")
    parser.add_argument("--policy", required=True, help="CascadePolicy YAML (manifest or bare spec)")
    parser.add_argument("--out", required=True, help="where to write the calibrated policy YAML")
    parser.add_argument("--split", default="train", help="rows of this split only ('all' for every row)")
    parser.add_argument(
        "--benchmark", action="append", default=None, help="rows of this benchmark only (repeatable)"
    )
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="maximise savings at accuracy >= capable tier's minus this (default 0.01)",
    )
    goal.add_argument(
        "--target-cost", type=float, default=None, help="maximise accuracy at cost <= this x capable tier's"
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help="one-sided confidence for the accuracy constraint (paired bound on the train rows); "
        f"0.5 or less: point estimate (default {DEFAULT_CONFIDENCE})",
    )
    parser.add_argument("--max-points", type=int, default=MAX_POINTS, help="calibration points per tier")
    parser.add_argument(
        "--min-reference-rows",
        type=int,
        default=MIN_REFERENCE_ROWS,
        help="rows that must reach a tier for its drift reference to be written "
        f"(default {MIN_REFERENCE_ROWS}; docs/drift.md)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")


def write_policy(source_path: str, spec: CascadeSpec, out: str, header: str) -> None:
    """Write ``source_path``'s policy with each tier's confidence replaced by ``spec``'s."""
    data = load_yaml(source_path)
    body = data.get("spec") if isinstance(data, dict) and data.get("kind") == "CascadePolicy" else data
    if not isinstance(body, dict) or not isinstance(body.get("tiers"), list):
        raise PolicyError(f"{source_path}: no tiers list")
    for raw_tier, tier in zip(body["tiers"], spec.tiers, strict=True):
        raw_tier["confidence"] = tier.confidence.to_yaml_dict()
    parse_policy_spec(body, out)  # what we write must load
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        Path(out).write_text(comment + text)
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror}") from None


def summary_lines(cal: Calibration, names: Sequence[str], models: Sequence[str]) -> list[str]:
    ev, base = cal.chosen, cal.baseline
    lines = [f"rows: {cal.n_rows}", ""]
    lines.append(
        f"{'tier':<14}{'model':<22}{'points':>7}{'threshold':>11}{'share':>8}{'brier raw':>11}{'cal':>8}"
    )
    for i, tier in enumerate(cal.spec.tiers):
        pts = len(tier.confidence.calibration or [])
        thr = "-" if i == len(cal.spec.tiers) - 1 else f"{tier.confidence.threshold:.4f}"
        br = cal.brier_raw[i]
        bc = cal.brier_calibrated[i]
        lines.append(
            f"{names[i]:<14}{models[i]:<22}{pts:>7}{thr:>11}{ev.shares[i]:>8.1%}"
            f"{'-' if br is None else f'{br:.4f}':>11}{'-' if bc is None else f'{bc:.4f}':>8}"
        )
    savings = 1.0 - ev.cost / base.cost if base.cost > 0 else 0.0
    lines += [
        "",
        f"capable tier alone: accuracy {base.accuracy:.4f}, cost ${base.cost:.3e}/query",
        f"cascade:            accuracy {ev.accuracy:.4f}, cost ${ev.cost:.3e}/query, savings {savings:.1%}",
        f"({len(cal.results)} threshold combinations routed; numbers are on the rows fitted on)",
    ]
    if ev.shares[-1] >= 1.0:
        lines.append(NEVER_ACCEPTS)
    if cal.reference_rows is not None:
        parts = []
        for i, tier in enumerate(cal.spec.tiers):
            n = cal.reference_rows[i]
            if tier.confidence.reference is not None:
                parts.append(f"{names[i]} ({n} rows)")
            else:
                parts.append(f"{names[i]} none (only {n} rows reach it, need {cal.min_reference_rows})")
        lines.append("drift references (tierguard_confidence_psi): " + ", ".join(parts))
    return lines


def run(args: argparse.Namespace) -> int:
    _, spec = load_policy_spec(args.policy)
    if args.max_points < 2:
        raise UserError("--max-points must be at least 2")
    if args.min_reference_rows < 1:
        raise UserError("--min-reference-rows must be at least 1")
    objective = SelectionObjective(
        max_accuracy_drop=None if args.target_cost is not None else (args.max_accuracy_drop or 0.01),
        target_cost=args.target_cost,
        confidence=args.confidence,
    )
    if not 0.0 <= args.confidence < 1.0:
        raise UserError("--confidence must lie in [0, 1)")
    if args.target_cost is not None and args.target_cost <= 0:
        raise UserError("--target-cost must be positive")
    if args.max_accuracy_drop is not None and args.max_accuracy_drop < 0:
        raise UserError("--max-accuracy-drop must not be negative")
    ds = load_dataset(args.data, spec, strict=args.strict, benchmarks=args.benchmark)
    warn_skipped(ds, "tierguard calibrate")
    rows = ds.rows if args.split == "all" else ds.select(split=args.split)
    if not rows:
        have = sorted({f"{r.benchmark}/{r.split}" for r in ds.rows})
        raise UserError(
            f"no usable rows for split {args.split!r} (rows available: {', '.join(have) or 'none'})"
        )
    cal = calibrate(
        spec,
        rows,
        objective,
        max_points=args.max_points,
        progress=sys.stderr.isatty(),
        min_reference_rows=args.min_reference_rows,
    )
    header = (
        f"Calibrated by `tierguard calibrate` on {Path(args.data).name}, split {args.split}"
        + (f", benchmark {','.join(args.benchmark)}" if args.benchmark else "")
        + f" ({cal.n_rows} rows).\nObjective: {objective.describe()}."
    )
    write_policy(args.policy, cal.spec, args.out, header)
    print(f"objective: {objective.describe()}")
    for line in summary_lines(cal, ds.tiers, ds.models):
        print(line)
    print(f"wrote {args.out}")
    return 0
