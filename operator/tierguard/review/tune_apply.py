"""`tierguard tune --apply`: what to write to the cluster (pure; the I/O is in
:mod:`tierguard.kube.tune`).

From the policy object as read (its ``spec``, ``status`` and ``resourceVersion``) and the tuned
thresholds, :func:`plan` decides one of:

- **skip**: a rollout is in progress (phase ``Progressing`` or ``Paused``). Its canary is the
  spec's cascade, still being judged; a tuned revision would replace it (and a revision waiting
  for approval would never be approved). Tune runs again when the rollout has finished.
- **no change**: every threshold stays: nothing is written.
- **write**: one JSON merge patch carrying ``metadata.resourceVersion`` (the API server rejects it
  with 409 if anyone changed the policy since it was read: no lost write), the tiers with their new
  thresholds (every other field as read), and the annotation ``tierguard.io/tuned``
  (:class:`~tierguard.rollout.approval.TunedRecord`: the revision written, the one before, the
  labels read, each change, the approval mode). The operator sees a new revision and rolls it out
  through the SLO gates; with approval ``manual`` it waits at the first step for a person.

``--dry-run`` prints :func:`spec_diff` and writes nothing.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from ..calibration import GUARANTEE_ANNOTATION
from ..errors import PolicyError
from ..policy import Revision, parse_policy_spec
from ..rollout.approval import TUNED_ANNOTATION, Approval, ThresholdChange, TunedRecord
from ..rollout.status import ROLLING


@dataclass(frozen=True)
class Plan:
    """What one run writes: ``patch`` None means nothing (``reason`` says why)."""

    reason: str
    patch: dict[str, Any] | None = None
    diff: str = ""
    record: TunedRecord | None = None


def with_thresholds(spec: Mapping[str, Any], thresholds: Sequence[float]) -> dict[str, Any]:
    """A copy of the object's ``spec`` with the thresholds that changed replaced (nothing else:
    a tier whose threshold stays keeps its fields exactly as written, defaults left out)."""
    out = copy.deepcopy(dict(spec))
    tiers = out.get("tiers")
    if not isinstance(tiers, list) or len(tiers) != len(thresholds):
        raise PolicyError("the policy's spec.tiers does not match the tuned tiers")
    current = [t.confidence.threshold for t in parse_policy_spec(spec, "spec").tiers]
    for tier, threshold, old in zip(tiers, thresholds, current, strict=True):
        if threshold == old:
            continue
        conf = tier.setdefault("confidence", {})
        if not isinstance(conf, dict):
            raise PolicyError(f"spec.tiers[{tier.get('name')!r}].confidence is not a mapping")
        conf["threshold"] = threshold
    return out


def spec_diff(before: Mapping[str, Any], after: Mapping[str, Any], name: str) -> str:
    """A unified diff of the two specs as YAML (what ``--dry-run`` prints)."""
    a = yaml.safe_dump({"spec": dict(before)}, sort_keys=False).splitlines(keepends=True)
    b = yaml.safe_dump({"spec": dict(after)}, sort_keys=False).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"{name} (cluster)", f"{name} (tuned)"))


def rolling_reason(status: Mapping[str, Any]) -> str | None:
    """Why tune must not write now (a rollout in progress), or None."""
    phase = status.get("phase")
    if phase in ROLLING:
        canary = status.get("canaryRevision") or "?"
        return (
            f"a rollout of revision {canary} is in progress (phase {phase}): nothing applied; tune "
            "again once it is promoted, rolled back or aborted"
        )
    return None


def plan(
    obj: Mapping[str, Any],
    thresholds: Sequence[float],
    changes: Sequence[ThresholdChange],
    *,
    labels: int,
    approval: Approval,
    now: datetime,
    rows: int = 0,
    guarantee: Mapping[str, Any] | None = None,
) -> Plan:
    """What to write for the policy object ``obj`` (as read) tuned to ``thresholds``; ``changes``
    are the tiers' threshold moves (for the record), ``guarantee`` what tune certified (written to
    the ``tierguard.io/guarantee`` annotation, as ``calibrate`` and the file path do)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", "policy"))
    reason = rolling_reason(obj.get("status") or {})
    if reason is not None:
        return Plan(reason)
    before = dict(obj.get("spec") or {})
    after = with_thresholds(before, thresholds)
    moved = [c for c in changes if c.new != c.old]
    if not moved or after == before:
        return Plan("no threshold changed: nothing applied")
    old_rev = Revision.of(parse_policy_spec(before, f"{name}: spec").cascade()).name
    new_rev = Revision.of(parse_policy_spec(after, f"{name}: tuned spec").cascade()).name
    record = TunedRecord(
        revision=new_rev,
        previous=old_rev,
        labels=labels,
        approval=approval,
        time=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        changes=list(moved),
        rows=rows,
    )
    patch = {
        "metadata": {
            "resourceVersion": str(meta["resourceVersion"]),
            "annotations": {
                TUNED_ANNOTATION: record.to_annotation(),
                **({GUARANTEE_ANNOTATION: json.dumps(dict(guarantee), sort_keys=True)} if guarantee else {}),
            },
        },
        "spec": {"tiers": after["tiers"]},
    }
    return Plan(f"revision {old_rev} -> {new_rev}", patch, spec_diff(before, after, name), record)
