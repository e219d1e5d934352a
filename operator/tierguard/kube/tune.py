"""``tierguard tune``: the review-label tuning of :mod:`tierguard.review.tune_cmd`, for a file (the
GitOps path) or, with ``--policy-ref``, for a CascadePolicy in the cluster:

    tierguard tune --store URL --policy FILE --out FILE ...          # write a file for a Git commit
    tierguard tune --store URL --policy-ref [NS/]NAME --dry-run ...  # print the diff, write nothing
    tierguard tune --store URL --policy-ref [NS/]NAME --apply [--approval manual|auto] ...

``--apply`` reads the policy, tunes its spec and writes the result in one merge patch with the
``resourceVersion`` it read (a concurrent edit fails with a clear error and nothing is written),
plus the annotation ``tierguard.io/tuned`` saying what changed and from how many labels (see
:mod:`tierguard.review.tune_apply`). The operator rolls the new revision out through the SLO gates;
with ``--approval manual`` (default: ``spec.autoTune.approval``, else ``auto``) the rollout waits
at its first step for ``tierguard promote``. No change, or a rollout in progress: nothing written,
exit 0. This is also what ``spec.autoTune``'s CronJob runs (:mod:`tierguard.kube.autotune`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from ..errors import PolicyError, UserError
from ..policy import load_yaml, parse_policy_spec
from ..review import tune_cmd
from ..review.tune import Tuning
from ..review.tune_apply import plan, rolling_reason
from ..review.tune_cmd import EvidenceSummary
from ..rollout.approval import ThresholdChange
from .client import KubeApi, KubeError, load_api_client, policy_path
from .control import _default_namespace, _user_error


def configure(parser: argparse.ArgumentParser) -> None:
    tune_cmd.configure(parser)
    cluster = parser.add_argument_group("a policy in the cluster")
    cluster.add_argument(
        "--policy-ref",
        metavar="[NS/]NAME",
        help="tune this CascadePolicy in the cluster (with --apply or --dry-run)",
    )
    mode = cluster.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="apply the tuned spec as a new revision")
    mode.add_argument("--dry-run", action="store_true", help="print the change as a diff; write nothing")
    cluster.add_argument(
        "--approval",
        choices=["manual", "auto"],
        default=None,
        help="manual: the new revision's rollout waits at its first step for 'tierguard promote' "
        "(default: the policy's spec.autoTune.approval, else auto)",
    )
    cluster.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    cluster.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, $KUBECONFIG)"
    )
    cluster.add_argument("--context", default=None, help="kubeconfig context")


def _ref(args: argparse.Namespace) -> tuple[str | None, str] | None:
    """(namespace or None, name) of the policy to apply to; None for the file path."""
    if args.policy_ref:
        ns, _, name = args.policy_ref.rpartition("/")
        return (ns or args.namespace, name)
    if not (args.apply or args.dry_run):
        return None
    if not args.policy:
        raise UserError("--apply and --dry-run need --policy-ref [NS/]NAME (or --policy FILE naming it)")
    data = load_yaml(args.policy)
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not meta.get("name"):
        raise UserError(f"{args.policy}: no metadata.name: give --policy-ref [NS/]NAME")
    return (meta.get("namespace") or args.namespace, str(meta["name"]))


def run(args: argparse.Namespace) -> int:
    ref = _ref(args)
    if ref is None:
        return tune_cmd.run(args)
    if not (args.apply or args.dry_run):
        raise UserError("--policy-ref needs --apply (write the new revision) or --dry-run (print the diff)")
    try:
        api = KubeApi(load_api_client(args.kubeconfig, args.context), timeout=15.0)
    except Exception as err:
        raise UserError(f"cannot load Kubernetes credentials: {err}") from None
    ns = ref[0] or _default_namespace(args.kubeconfig, args.context)
    name = ref[1]
    try:
        obj: dict[str, Any] = dict(api.get(policy_path(ns, name)))
    except KubeError as err:
        raise _user_error(err, ns, name) from None
    try:
        spec = parse_policy_spec(obj.get("spec"), f"cascadepolicy {ns}/{name}")
    except PolicyError as err:
        raise UserError(str(err)) from None
    busy = rolling_reason(obj.get("status") or {})
    if busy is not None:  # before reading the store; plan() checks it again
        print(f"cascadepolicy {ns}/{name}: {busy}")
        return 0
    approval = args.approval or (spec.auto_tune.approval if spec.auto_tune is not None else "auto")
    print(
        f"tuning cascadepolicy {ns}/{name} (resourceVersion {obj['metadata']['resourceVersion']})",
        file=sys.stderr,
    )

    def sink(result: Tuning, summary: EvidenceSummary) -> int:
        if not result.is_certified:
            # not an error for a scheduled run: there is not (yet) enough evidence to move safely
            print(f"cascadepolicy {ns}/{name}: nothing certified, nothing applied: {result.why_not()}")
            return 0
        cheaper = spec.tiers[:-1]
        thresholds = [*result.new_thresholds, spec.tiers[-1].confidence.threshold]
        how = f"certified at shift {result.chosen.shift:+g}" if result.chosen is not None else "certified"
        changes = [
            ThresholdChange(t.name, old, new, summary.labels, how)
            for t, old, new in zip(cheaper, result.current, result.new_thresholds, strict=True)
        ]
        p = plan(
            obj,
            thresholds,
            changes,
            labels=summary.labels,
            rows=result.n,
            approval=approval,
            now=datetime.now(UTC),
            guarantee=result.record(),
        )
        if p.patch is None or p.record is None:
            print(f"cascadepolicy {ns}/{name}: {p.reason}")
            return 0
        if args.dry_run:
            print(p.diff, end="")
            print(f"cascadepolicy {ns}/{name}: {p.reason} (dry run: nothing applied)")
            return 0
        try:
            api.merge_patch(policy_path(ns, name), p.patch)
        except KubeError as err:
            if err.conflict:
                raise UserError(
                    f"cascadepolicy {ns}/{name} changed since it was read (resourceVersion "
                    f"{obj['metadata']['resourceVersion']}): nothing applied; run tune again"
                ) from None
            raise _user_error(err, ns, name) from None
        gate = (
            f"; approval manual: it waits at the first step for 'tierguard promote {name} -n {ns}'"
            if approval == "manual"
            else "; the operator rolls it out through the SLO gates"
        )
        print(f"cascadepolicy {ns}/{name}: applied {p.reason} ({p.record.summary()}){gate}")
        return 0

    return tune_cmd.run(args, source=(name, spec), sink=sink)
