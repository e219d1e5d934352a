"""``tierguard tune``: raise the thresholds whose reviewed accuracy misses the target, from the
review store's labels, and write the tuned CascadePolicy for a Git commit (see :mod:`.tune`).

    tierguard tune --store URL --policy FILE --out FILE [--target-accuracy A | --max-accuracy-drop X]
                   [--max-step 0.05] [--min-labels 50] [--revision NAME]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..policy import CascadePolicySpec
from .store import StoreError, open_store
from .tune import TierChange

# The cluster path (`tune --apply`, tierguard.kube.tune) hands in the policy it read and takes the
# result instead of a file: sink(thresholds, changes, labels read, target) -> exit code.
Sink = Callable[[list[float], list[TierChange], int, float], int]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="sqlite:PATH or a postgresql:// URL")
    parser.add_argument("--policy", metavar="FILE", help="the CascadePolicy to tune")
    parser.add_argument("--out", metavar="FILE", help="where to write the tuned policy (for a Git commit)")
    parser.add_argument(
        "--policy-name", default=None, help="the policy's name in the store (default: the file's)"
    )
    parser.add_argument("--revision", default=None, help="only labels of this revision (default: all)")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="accuracy the accepted answers of each tier must reach (default: the last "
        "tier's reviewed accuracy minus --max-accuracy-drop)",
    )
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01, help="default 0.01")
    parser.add_argument(
        "--max-step", type=float, default=0.05, help="largest threshold change per run (default 0.05)"
    )
    parser.add_argument(
        "--min-labels", type=int, default=50, help="labels a tier needs before it is tuned (default 50)"
    )


def run(
    args: argparse.Namespace,
    source: tuple[str, CascadePolicySpec] | None = None,
    sink: Sink | None = None,
) -> int:
    from ..policy import load_policy_spec
    from .estimate import estimates
    from .tune import Label, tune_tier

    if source is None and not (args.policy and args.out):
        raise UserError("give --policy FILE and --out FILE (or --policy-ref NAME with --apply or --dry-run)")
    name, spec = source if source is not None else load_policy_spec(args.policy)
    try:
        store = open_store(args.store)
    except StoreError as err:
        raise UserError(str(err)) from None
    rows = store.items(policy=args.policy_name or name, revision=args.revision, limit=10_000_000)
    store.close()
    labelled = [r for r in rows if r.label in ("correct", "incorrect")]
    if not labelled:
        raise UserError(
            f"no labelled review items for policy {args.policy_name or name!r}"
            + (f", revision {args.revision!r}" if args.revision else "")
        )
    names = [t.name for t in spec.tiers]
    if args.target_accuracy is not None:
        target = args.target_accuracy
        basis = f"--target-accuracy {target:g}"
    else:
        from .estimate import SampledItem

        last = next(
            (
                e
                for e in estimates(
                    SampledItem(r.item.revision, r.item.tier, r.item.probability, r.label) for r in labelled
                )
                if e.tier == names[-1] and e.accuracy is not None
            ),
            None,
        )
        if last is None or last.accuracy is None:
            raise UserError(f"no labels for the last tier {names[-1]!r}: give --target-accuracy")
        target = last.accuracy - args.max_accuracy_drop
        basis = f"{names[-1]} reviewed accuracy {last.accuracy:.3f} - {args.max_accuracy_drop:g}"
    thresholds = [t.confidence.threshold for t in spec.tiers]
    lines = [f"target accuracy of accepted answers: {target:.3f} ({basis})"]
    changes: list[TierChange] = []
    for i, tier in enumerate(spec.tiers[:-1]):
        labels = [
            Label(r.item.confidence, r.label == "correct", r.item.probability)
            for r in labelled
            if r.item.tier == tier.name and r.item.confidence is not None
        ]
        ch = tune_tier(
            tier.name, labels, thresholds[i], target, max_step=args.max_step, min_labels=args.min_labels
        )
        thresholds[i] = ch.new_threshold
        changes.append(ch)
        acc = "n/a" if ch.accuracy is None else f"{ch.accuracy:.3f} (lower bound {ch.lower_bound:.3f})"
        lines.append(
            f"{tier.name}: {ch.labels} labels, accuracy {acc}: threshold {ch.threshold:g} -> "
            f"{ch.new_threshold:g} ({ch.reason})"
        )
    if sink is not None:
        print("\n".join(lines), file=sys.stderr)
        return sink(thresholds, changes, len(labelled), target)
    header = "written by tierguard tune from review labels\n" + "\n".join(lines)
    write_thresholds(args.policy, thresholds, args.out, header)
    print("\n".join(lines), file=sys.stderr)
    print(f"policy written to {args.out}", file=sys.stderr)
    return 0


def write_thresholds(source_path: str, thresholds: list[float], out: str, header: str) -> None:
    """Write ``source_path``'s policy with the tiers' thresholds replaced (nothing else changes)."""
    import yaml

    from ..policy import PolicyError, load_yaml, parse_policy_spec

    data = load_yaml(source_path)
    body = data.get("spec") if isinstance(data, dict) and data.get("kind") == "CascadePolicy" else data
    if not isinstance(body, dict) or not isinstance(body.get("tiers"), list):
        raise PolicyError(f"{source_path}: no tiers list")
    for raw_tier, threshold in zip(body["tiers"], thresholds, strict=True):
        conf = raw_tier.setdefault("confidence", {})
        if not isinstance(conf, dict):
            raise PolicyError(f"{source_path}: a tier's confidence is not a mapping")
        conf["threshold"] = threshold
    parse_policy_spec(body, out)  # what we write must load
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        Path(out).write_text(comment + text)
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror}") from None
