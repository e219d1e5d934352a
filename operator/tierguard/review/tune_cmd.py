"""``tierguard tune``: new thresholds for a CascadePolicy from the review store's production
evidence (shadow and escalation comparisons with the capable tier, reviewers' labels, bad outcome
events), certified like ``tierguard calibrate``'s and written for a Git commit (see :mod:`.tune`).

    tierguard tune --store URL --policy FILE --out FILE [--max-accuracy-drop 0.01] [--delta 0.1]
                   [--max-step 0.05] [--step 0.01] [--bad-outcome human_handoff] [--revision NAME]

Exit status: 0 written; 3 nothing certified (nothing written, the message says why); 2 bad input.
The steps are functions of their own (:func:`read_evidence`, :func:`tune_policy`,
:func:`report_lines`, :func:`write_tuned`) so another way of delivering the result (applying it
as a new revision) reuses them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..calibration import GUARANTEE_ANNOTATION
from ..errors import UserError
from ..policy import CascadePolicySpec
from .store import Event, Store, StoreError, open_store
from .tune import DEFAULT_DELTA, DEFAULT_EPS, DEFAULT_MAX_STEP, DEFAULT_STEP, Evidence, TuneError, Tuning

NOTHING_CERTIFIED = 3
BAD_OUTCOME = re.compile(r"^([a-z][a-z0-9_]{0,62})(?:(<=|>=|<|>|==)(-?[0-9.]+(?:e-?[0-9]+)?))?$")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="sqlite:PATH or a postgresql:// URL")
    parser.add_argument("--policy", metavar="FILE", help="the CascadePolicy to tune")
    parser.add_argument("--out", metavar="FILE", help="where to write the tuned policy (for a Git commit)")
    parser.add_argument(
        "--policy-name", default=None, help="the policy's name in the store (default: the file's)"
    )
    parser.add_argument("--revision", default=None, help="only evidence of this revision (default: all)")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_EPS,
        help=f"certify accuracy >= the capable tier's minus this, a fraction (default {DEFAULT_EPS})",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help=f"the guarantee may fail with probability at most this (default {DEFAULT_DELTA})",
    )
    parser.add_argument(
        "--max-step",
        type=float,
        default=DEFAULT_MAX_STEP,
        help=f"largest threshold change per run, up or down (default {DEFAULT_MAX_STEP})",
    )
    parser.add_argument(
        "--step",
        type=float,
        default=DEFAULT_STEP,
        help=f"spacing of the tested shifts (default {DEFAULT_STEP})",
    )
    parser.add_argument(
        "--bad-outcome",
        action="append",
        default=[],
        metavar="EVENT[OP VALUE]",
        help="an outcome event that marks a cheaper tier's answer as a loss, e.g. human_handoff, "
        "'rating<=2', 'refund>0' (repeatable; an event name alone: any value > 0)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the tested path as JSON")


@dataclass(frozen=True)
class BadOutcome:
    event: str
    op: str = ">"
    value: float = 0.0

    def matches(self, ev: Event) -> bool:
        if ev.name != self.event:
            return False
        v = ev.value
        return {
            "<=": v <= self.value,
            ">=": v >= self.value,
            "<": v < self.value,
            ">": v > self.value,
            "==": v == self.value,
        }[self.op]


def parse_bad_outcome(text: str) -> BadOutcome:
    m = BAD_OUTCOME.match(text.replace(" ", ""))
    if m is None:
        raise UserError(f"--bad-outcome {text!r}: expected EVENT or EVENT<=VALUE (ops <=, >=, <, >, ==)")
    name, op, value = m.groups()
    try:
        return BadOutcome(name, op or ">", float(value) if value is not None else 0.0)
    except ValueError:
        raise UserError(f"--bad-outcome {text!r}: {value!r} is not a number") from None


@dataclass
class EvidenceSummary:
    comparisons: int
    shadow: int
    escalation: int
    labels: int
    bad_events: int
    reviewed: list[str]  # the labels' inclusion-weighted accuracy per revision and tier (context)


def read_evidence(
    store: Store, policy: str, revision: str | None, spec: CascadePolicySpec, bad: Sequence[BadOutcome]
) -> tuple[list[Evidence], EvidenceSummary]:
    """The evidence rows of ``policy`` (and ``revision``) in the store. A comparison's confidence
    is its raw confidence through the policy's own calibration map when it was recorded (the
    store's calibrated value was computed with the map of the revision that served it)."""
    from .estimate import SampledItem, estimates
    from .tune import gather

    maps = {t.name: t.confidence.calibration_map() for t in spec.tiers}
    results = store.shadow_results(policy=policy, revision=revision)
    labelled = [
        r
        for r in store.items(policy=policy, revision=revision, limit=10_000_000)
        if r.label in ("correct", "incorrect")
    ]
    labels = {r.item.id: r.label == "correct" for r in labelled}
    reviewed = [
        f"reviewed accuracy {e.revision}/{e.tier}: {e.accuracy:.3f} (95% {e.lo:.3f}-{e.hi:.3f}, "
        f"{e.labels} labels, inclusion-weighted)"
        for e in estimates(
            SampledItem(r.item.revision, r.item.tier, r.item.probability, r.label) for r in labelled
        )
        if e.accuracy is not None and e.lo is not None and e.hi is not None and e.tier != "*"
    ]
    bad_ids = {ev.response_id for ev in store.events(policy=policy) if any(b.matches(ev) for b in bad)}
    rows = gather(
        (
            (
                r.response_id,
                r.probability,
                r.answered,
                r.tier,
                maps[r.tier](r.raw_confidence)
                if r.raw_confidence is not None and r.tier in maps
                else r.confidence,
                r.agree,
            )
            for r in results
        ),
        labels,
        bad_ids,
        [t.name for t in spec.tiers],
    )
    summary = EvidenceSummary(
        comparisons=len(results),
        shadow=sum(1 for r in results if r.source == "shadow"),
        escalation=sum(1 for r in results if r.source == "escalation"),
        labels=len(labels),
        bad_events=len(bad_ids),
        reviewed=reviewed,
    )
    return rows, summary


def tune_policy(
    args: argparse.Namespace, source: tuple[str, CascadePolicySpec] | None = None
) -> tuple[str, CascadePolicySpec, Tuning, EvidenceSummary]:
    """Read the policy (``args.policy``, or ``source``: a name and spec read elsewhere, e.g. from
    the cluster) and the store, tune: (policy name in the store, input spec, tuning, evidence
    summary). Bad input is a :class:`UserError`."""
    from ..policy import load_policy_spec
    from .tune import tune

    name, spec = source if source is not None else load_policy_spec(args.policy)
    policy = args.policy_name or name
    bad = [parse_bad_outcome(b) for b in args.bad_outcome]
    try:
        store = open_store(args.store)
    except StoreError as err:
        raise UserError(str(err)) from None
    try:
        evidence, summary = read_evidence(store, policy, args.revision, spec, bad)
    except StoreError as err:
        raise UserError(str(err)) from None
    finally:
        store.close()
    if not evidence:
        where = f"policy {policy!r}" + (f", revision {args.revision!r}" if args.revision else "")
        raise UserError(
            f"no shadow or escalation comparisons for {where} in {args.store.split('@')[-1]}: turn on "
            "review sampling (spec.proxy.review) with a shadow rate, or check --policy-name / --revision"
            + (
                f" ({summary.labels} labels alone cannot be compared with the capable tier)"
                if summary.labels
                else ""
            )
        )
    try:
        result = tune(
            spec,
            evidence,
            eps=args.max_accuracy_drop,
            delta=args.delta,
            max_step=args.max_step,
            step=args.step,
        )
    except TuneError as err:
        raise UserError(str(err)) from None
    return policy, spec, result, summary


def report_lines(spec: CascadePolicySpec, t: Tuning, s: EvidenceSummary) -> list[str]:
    names = [x.name for x in spec.tiers[:-1]]
    lines = [
        f"evidence: {s.comparisons} comparisons with the capable tier ({s.shadow} shadow, {s.escalation} "
        f"escalation), {s.labels} labels, {s.bad_events} responses with a bad outcome",
        f"rows: {t.rows} sampled requests"
        + (
            f" ({t.unknown_probability} more without an inclusion probability, left out)"
            if t.unknown_probability
            else ""
        )
        + f"; {t.n} kept at a common inclusion probability {t.thinned_to:.4g}"
        + f" ({t.labels_used} labelled, {t.bad_outcomes} with a bad outcome)",
        *s.reviewed,
    ]
    if not t.lowering:
        lines.append("lowering is off: thresholds are only kept or raised")
    if t.path:
        last = t.path[-1]
        stop = (
            f"stopped at shift {last.shift:+g} ({last.losses} losses, p = {last.p_value:.3f} > {t.delta:g})"
            if t.certified < len(t.path)
            else "every shift on the path certified"
        )
        lines.append(f"path: {t.certified} of {len(t.path)} tested shifts certified; {stop}")
    for i, name in enumerate(names):
        new = t.new_thresholds[i]
        share = f", answers {t.chosen.shares[i]:.1%} of the rows" if t.chosen is not None else ""
        lines.append(f"{name}: threshold {t.current[i]:.6g} -> {new:.6g}{share}")
    if t.chosen is not None:
        lines.append(
            f"chosen: shift {t.chosen.shift:+g}, {t.chosen.losses} losses in {t.n} rows, "
            f"p = {t.chosen.p_value:.4f}"
        )
    lines.append(f"guarantee: {t.statement()}")
    return lines


def write_tuned(source_path: str, t: Tuning, out: str, header: str) -> None:
    """Write ``source_path``'s policy with the tuned thresholds and the guarantee annotation."""
    write_thresholds(
        source_path,
        [*t.new_thresholds, t.spec.tiers[-1].confidence.threshold],
        out,
        header,
        {GUARANTEE_ANNOTATION: json.dumps(t.record(), sort_keys=True)},
    )


# The cluster path (`tune --apply`, tierguard.kube.tune) hands in the policy it read and takes the
# result instead of a file: sink(tuning, evidence summary) -> exit code.
Sink = Callable[[Tuning, EvidenceSummary], int]


def run(
    args: argparse.Namespace,
    source: tuple[str, CascadePolicySpec] | None = None,
    sink: Sink | None = None,
) -> int:
    if source is None and not (args.policy and args.out):
        raise UserError("give --policy FILE and --out FILE (or --policy-ref NAME with --apply or --dry-run)")
    policy, spec, result, summary = tune_policy(args, source)
    lines = report_lines(spec, result, summary)
    print("\n".join(lines), file=sys.stderr)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        except OSError as err:
            raise UserError(f"{args.json}: cannot write: {err.strerror}") from None
    if sink is not None:
        return sink(result, summary)
    if not result.is_certified:
        print(f"tierguard tune: nothing written to {args.out}: {result.why_not()}", file=sys.stderr)
        return NOTHING_CERTIFIED
    header = (
        f"written by tierguard tune from production evidence of policy {policy}"
        + (f", revision {args.revision}" if args.revision else "")
        + "\n"
        + "\n".join(lines)
    )
    write_tuned(args.policy, result, args.out, header)
    print(f"policy written to {args.out}", file=sys.stderr)
    return 0


def write_thresholds(
    source_path: str,
    thresholds: list[float],
    out: str,
    header: str,
    annotations: dict[str, str] | None = None,
) -> None:
    """Write ``source_path``'s policy with the tiers' thresholds replaced and ``annotations`` added
    to a manifest's metadata (nothing else changes; a bare spec keeps only the header comment)."""
    import yaml

    from ..policy import PolicyError, load_yaml, parse_policy_spec

    data = load_yaml(source_path)
    manifest = isinstance(data, dict) and data.get("kind") == "CascadePolicy"
    body = data.get("spec") if manifest else data
    if not isinstance(body, dict) or not isinstance(body.get("tiers"), list):
        raise PolicyError(f"{source_path}: no tiers list")
    for raw_tier, threshold in zip(body["tiers"], thresholds, strict=True):
        conf = raw_tier.setdefault("confidence", {})
        if not isinstance(conf, dict):
            raise PolicyError(f"{source_path}: a tier's confidence is not a mapping")
        conf["threshold"] = threshold
    if manifest and annotations:
        meta = data.get("metadata") or {}
        data["metadata"] = meta
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    parse_policy_spec(body, out)  # what we write must load
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        Path(out).write_text(comment + text)
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror}") from None
