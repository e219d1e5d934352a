"""``tierguard calibrate``: fit each tier's calibration map and certify thresholds on recorded
outcomes, and write the calibrated policy with its guarantee (docs/guarantee.md).

The fitting is :mod:`tierguard.calibration`'s (the certificate, the objectives, the search, the
drift references); this module reads the data and the policy, reports, and writes the policy file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from html import escape
from pathlib import Path

import yaml

from .calibration import (
    DEFAULT_DELTA,
    DEFAULT_DROP,
    GUARANTEE_ANNOTATION,
    MAX_POINTS,
    MIN_REFERENCE_ROWS,
    NEVER_ACCEPTS,
    Calibration,
    SelectionObjective,
    calibrate,
)
from .errors import PolicyError, UserError
from .nodata import explain_no_rows
from .outcomes import Row, load_dataset, warn_skipped
from .policy import CascadePolicySpec, CascadeSpec, load_policy_spec, load_yaml, parse_policy_spec
from .reliability import oof_reliability, reliability_section
from .svgplot import CSS

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
        help="certify accuracy >= capable tier's minus this, as a fraction "
        f"(default {DEFAULT_DROP}; docs/guarantee.md)",
    )
    goal.add_argument(
        "--target-cost",
        type=float,
        default=None,
        help="maximise accuracy at cost <= this x capable tier's (no guarantee)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help=f"the guarantee may fail with probability at most this (default {DEFAULT_DELTA})",
    )
    parser.add_argument("--max-points", type=int, default=MAX_POINTS, help="calibration points per tier")
    parser.add_argument(
        "--min-reference-rows",
        type=int,
        default=MIN_REFERENCE_ROWS,
        help="rows that must reach a tier for its drift reference to be written "
        f"(default {MIN_REFERENCE_ROWS}; docs/drift.md)",
    )
    parser.add_argument("--report", default=None, help="also write an HTML report (reliability diagrams)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")


def write_policy(
    source_path: str,
    spec: CascadeSpec,
    out: str,
    header: str,
    annotations: dict[str, str] | None = None,
) -> None:
    """Write ``source_path``'s policy with its tiers replaced by ``spec``'s (same names; tiers
    ``spec`` lacks are left out) and each tier's confidence by ``spec``'s. ``annotations`` go to
    ``metadata.annotations`` of a manifest (a bare spec has nowhere to keep them: the header
    comment carries the same text)."""
    data = load_yaml(source_path)
    manifest = isinstance(data, dict) and data.get("kind") == "CascadePolicy"
    body = data.get("spec") if manifest else data
    if not isinstance(body, dict) or not isinstance(body.get("tiers"), list):
        raise PolicyError(f"{source_path}: no tiers list")
    by_name = {t.name: t for t in spec.tiers}
    tiers = [t for t in body["tiers"] if isinstance(t, dict) and t.get("name") in by_name]
    if len(tiers) != len(spec.tiers):
        raise PolicyError(f"{source_path}: tiers do not match the calibrated policy")
    for raw_tier in tiers:
        raw_tier["confidence"] = by_name[raw_tier["name"]].confidence.to_yaml_dict()
    body["tiers"] = tiers
    if manifest and annotations:
        meta = data.setdefault("metadata", {}) or {}
        data["metadata"] = meta
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    parse_policy_spec(body, out)  # what we write must load
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        Path(out).write_text(comment + text)
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror}") from None


def guarantee_lines(cal: Calibration) -> list[str]:
    cert = cal.certificate
    if cert is None:
        return ["guarantee: none (--target-cost chooses on the rows it reports; use --max-accuracy-drop)"]
    lines = [f"guarantee: {cert.statement()}"]
    tested = cert.path
    if tested:
        last = tested[-1]
        stop = (
            f"stopped at raw threshold {last.raw_threshold:.12g} (p = {last.p_value:.3f} > {cert.delta:g}; "
            f"{last.losses} losses, {last.gains} gains)"
            if cert.certified < len(tested)
            else "every threshold on the path certified"
        )
        lines.append(f"  path: {cert.certified} of {len(tested)} tested thresholds certified; {stop}")
    if cert.chosen is not None:
        c = cert.chosen
        lines.append(
            f"  chosen: raw threshold {c.raw_threshold:.12g} for every cheaper tier, p = {c.p_value:.4f}, "
            f"{c.losses} losses and {c.gains} gains vs the capable tier on {cert.n} rows"
        )
    lines.append(f"  data: sha256 {cert.data_hash[:16]}..., assumption: traffic exchangeable with these rows")
    return lines


def summary_lines(cal: Calibration, names: Sequence[str], models: Sequence[str]) -> list[str]:
    ev, base = cal.chosen, cal.baseline
    lines = [f"rows: {cal.n_rows}", ""]
    if cal.capable_only:
        lines += [
            f"capable tier alone: accuracy {base.accuracy:.4f}, cost ${base.cost:.3e}/query",
            f"proposal: capable-only ({NEVER_ACCEPTS})",
            *guarantee_lines(cal),
        ]
        return lines
    by_name = dict(zip(names, models, strict=True))
    lines.append(
        f"{'tier':<14}{'model':<22}{'points':>7}{'threshold':>11}{'share':>8}{'brier raw':>11}{'cal':>8}"
    )
    for i, tier in enumerate(cal.spec.tiers):
        pts = len(tier.confidence.calibration or [])
        thr = "-" if i == len(cal.spec.tiers) - 1 else f"{tier.confidence.threshold:.4f}"
        br = cal.brier_raw[i]
        bc = cal.brier_calibrated[i]
        lines.append(
            f"{tier.name:<14}{by_name.get(tier.name, tier.model):<22}{pts:>7}{thr:>11}{ev.shares[i]:>8.1%}"
            f"{'-' if br is None else f'{br:.4f}':>11}{'-' if bc is None else f'{bc:.4f}':>8}"
        )
    lines += [
        "",
        f"capable tier alone: accuracy {base.accuracy:.4f}, cost ${base.cost:.3e}/query",
        f"cascade:            accuracy {ev.accuracy:.4f}, cost ${ev.cost:.3e}/query, "
        f"savings {cal.savings:.1%} (on the rows fitted on)",
    ]
    if cal.results:
        lines.append(f"({len(cal.results)} threshold combinations routed)")
    for name in cal.dropped:
        lines.append(
            f"dropped tier {name}: its threshold can never be reached (it would be paid for, never answer)"
        )
    lines += guarantee_lines(cal)
    if cal.reference_rows is not None:
        parts = []
        for i, tier in enumerate(cal.spec.tiers):
            n = cal.reference_rows[i]
            if tier.confidence.reference is not None:
                parts.append(f"{tier.name} ({n} rows)")
            else:
                parts.append(f"{tier.name} none (only {n} rows reach it, need {cal.min_reference_rows})")
        lines.append("drift references (tierguard_confidence_psi): " + ", ".join(parts))
    lines += cal.warnings
    return lines


# --- the HTML report ---------------------------------------------------------------------------


def render_report(cal: Calibration, spec: CascadePolicySpec, rows: Sequence[Row]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tierguard calibrate</title>",
        f"<style>{CSS}</style></head><body><h1>tierguard calibrate</h1>",
        f"<p class='muted'>{cal.n_rows} rows</p><h2>Guarantee</h2><pre>",
        escape("\n".join(guarantee_lines(cal))),
        "</pre>",
    ]
    cert = cal.certificate
    if cert is not None and cert.path:
        parts.append(
            "<h2>Thresholds tested (in order)</h2><table><tr><th>raw threshold</th><th>losses</th>"
            "<th>gains</th><th>p-value</th><th>savings</th><th>certified</th></tr>"
        )
        for i, p in enumerate(cert.path):
            ok = i < cert.certified
            parts.append(
                f"<tr><td>{p.raw_threshold:.10g}</td><td>{p.losses}</td><td>{p.gains}</td>"
                f"<td>{p.p_value:.4f}</td><td>{p.savings:.1%}</td>"
                f"<td class='{'good' if ok else 'bad'}'>{'yes' if ok else 'no'}</td></tr>"
            )
        parts.append("</table>")
    parts.append(reliability_section(oof_reliability(spec, rows), [t.name for t in spec.tiers]))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: str, cal: Calibration, spec: CascadePolicySpec, rows: Sequence[Row]) -> None:
    try:
        Path(path).write_text(render_report(cal, spec, rows))
    except OSError as err:
        raise UserError(f"{path}: cannot write: {err.strerror}") from None


def objective_from_args(args: argparse.Namespace) -> SelectionObjective:
    """The objective the arguments ask for; bad values are :class:`UserError`."""
    if args.max_accuracy_drop is not None and not 0.0 <= args.max_accuracy_drop < 1.0:
        raise UserError("--max-accuracy-drop must lie in [0, 1) (a fraction: 0.01 is one point)")
    if args.target_cost is not None and args.target_cost <= 0:
        raise UserError("--target-cost must be positive")
    if not 0.0 < args.delta < 1.0:
        raise UserError("--delta must lie in (0, 1)")
    return SelectionObjective(
        max_accuracy_drop=None
        if args.target_cost is not None
        else (DEFAULT_DROP if args.max_accuracy_drop is None else args.max_accuracy_drop),
        target_cost=args.target_cost,
        delta=args.delta,
    )


def run(args: argparse.Namespace) -> int:
    _, spec = load_policy_spec(args.policy)
    if args.max_points < 2:
        raise UserError("--max-points must be at least 2")
    if args.min_reference_rows < 1:
        raise UserError("--min-reference-rows must be at least 1")
    objective = objective_from_args(args)
    ds = load_dataset(args.data, spec, strict=args.strict, benchmarks=args.benchmark)
    warn_skipped(ds, "tierguard calibrate")
    rows = ds.rows if args.split == "all" else ds.select(split=args.split)
    if not rows:
        raise UserError(explain_no_rows(args.data, spec, benchmarks=args.benchmark, split=args.split))
    cal = calibrate(
        spec,
        rows,
        objective,
        max_points=args.max_points,
        progress=sys.stderr.isatty(),
        min_reference_rows=args.min_reference_rows,
    )
    print(f"objective: {objective.describe()}")
    for line in summary_lines(cal, ds.tiers, ds.models):
        print(line)
    if args.report:
        write_report(args.report, cal, spec, rows)
        print(f"wrote {args.report}")
    if cal.capable_only:
        print(
            f"tierguard calibrate: nothing written to {args.out}: serve the capable tier alone",
            file=sys.stderr,
        )
        return 3
    header = (
        f"Calibrated by `tierguard calibrate` on {Path(args.data).name}, split {args.split}"
        + (f", benchmark {','.join(args.benchmark)}" if args.benchmark else "")
        + f" ({cal.n_rows} rows).\nObjective: {objective.describe()}."
    )
    annotations = None
    if cal.certificate is not None:
        header += f"\nGuarantee: {cal.certificate.statement()}"
        annotations = {GUARANTEE_ANNOTATION: json.dumps(cal.certificate.record(), sort_keys=True)}
    write_policy(args.policy, cal.spec, args.out, header, annotations)
    print(f"wrote {args.out}")
    return 0
