"""The children of ``spec.autoTune`` (pure): a CronJob running ``tierguard tune --apply`` on the
policy, and the identity it runs as.

Why a CronJob and not the operator's own loop: tune reads the review store, whose credentials
(``PGPASSWORD`` from a Secret, through ``spec.proxy.env`` / ``secretMounts``) the kubelet hands to
pods; the operator never reads Secrets and keeps no database connection. A Job also makes each
run visible (``kubectl get jobs``, its log), retried by nobody (``backoffLimit: 0``; the next
schedule is the retry), never two at once (``concurrencyPolicy: Forbid``), and suspendable.

Per policy ``NAME`` with ``spec.autoTune``:

- ServiceAccount ``NAME-tune``;
- Role ``NAME-tune``: ``get`` and ``patch`` on ``cascadepolicies`` limited to ``resourceNames:
  [NAME]`` -- the job can read and change this one policy and nothing else (no status, no other
  policy, no Secrets). The operator may grant it because it holds those verbs itself (RBAC's
  escalation check), so it needs neither ``bind`` nor ``escalate``;
- RoleBinding ``NAME-tune``;
- CronJob ``NAME-tune``: the schedule from ``interval`` (:func:`tierguard.cron.cron_schedule`,
  offset by a hash of the policy so policies do not all run in the same minute), the proxy's
  image, environment and Secret mounts, the Pod Security "restricted" settings.

All carry a controller owner reference to the policy (garbage-collected with it). When
``autoTune`` is removed the operator suspends the CronJob (it has no delete permission).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .. import API_GROUP
from ..cron import cron_schedule
from ..policy import AutoTuneSpec, CascadePolicySpec
from .render import labels, owner_reference, restricted_security_context, secret_volume_mounts, secret_volumes

TUNE_SUFFIX = "-tune"
MAX_CRONJOB_NAME = 52  # the CronJob controller appends an 11-character suffix to its Jobs' names
MAX_POLICY_NAME = MAX_CRONJOB_NAME - len(TUNE_SUFFIX)
JOB_DEADLINE_SECONDS = 900

Obj = dict[str, Any]


def tune_name(policy: str) -> str:
    return f"{policy}{TUNE_SUFFIX}"


def store_of(spec: CascadePolicySpec) -> str | None:
    """The review store tune reads: ``autoTune.store``, else the proxies' review store."""
    if spec.auto_tune is None:
        return None
    if spec.auto_tune.store is not None:
        return spec.auto_tune.store
    return spec.proxy.review.store if spec.proxy.review is not None else None


def problems(name: str, spec: CascadePolicySpec) -> list[str]:
    """Why ``spec.autoTune`` cannot work (empty when it can, or when it is off)."""
    if spec.auto_tune is None:
        return []
    out: list[str] = []
    if len(name) > MAX_POLICY_NAME:
        out.append(
            f"spec.autoTune: the policy name is {len(name)} characters; at most {MAX_POLICY_NAME} fit "
            f"the CronJob {tune_name(name)!r}"
        )
    store = store_of(spec)
    if store is None:
        out.append("spec.autoTune needs a review store: set spec.autoTune.store or spec.proxy.review.store")
    elif store.startswith("sqlite:"):
        out.append(
            f"spec.autoTune: the review store {store!r} is a SQLite file inside each proxy pod, which "
            "the tune job cannot open: use a postgresql:// store (spec.proxy.review.store)"
        )
    return out


def _seed(namespace: str, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")


def schedule(namespace: str, name: str, auto: AutoTuneSpec) -> str:
    return cron_schedule(auto.interval, _seed(namespace, name))


def tune_args(namespace: str, name: str, store: str, auto: AutoTuneSpec) -> list[str]:
    """The command line of one scheduled run."""
    args = [
        "tune",
        "--apply",
        "--policy-ref",
        f"{namespace}/{name}",
        "--store",
        store,
        "--max-step",
        f"{auto.max_step:g}",
        "--max-accuracy-drop",
        f"{auto.max_accuracy_drop:g}",
        "--delta",
        f"{auto.delta:g}",
        "--approval",
        auto.approval,
    ]
    for bad in auto.bad_outcomes:
        args += ["--bad-outcome", bad]
    return args


def _metadata(owner: Mapping[str, Any]) -> Obj:
    meta = owner["metadata"]
    return {
        "name": tune_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": {**labels(meta["name"]), "app.kubernetes.io/component": "tune"},
        "ownerReferences": [owner_reference(owner)],
    }


def service_account(owner: Mapping[str, Any]) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(owner)}


def role(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": ["cascadepolicies"],
                "resourceNames": [owner["metadata"]["name"]],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(owner: Mapping[str, Any]) -> Obj:
    meta = owner["metadata"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": tune_name(meta["name"])},
        "subjects": [
            {"kind": "ServiceAccount", "name": tune_name(meta["name"]), "namespace": meta["namespace"]}
        ],
    }


def cron_job(owner: Mapping[str, Any], spec: CascadePolicySpec) -> Obj:
    meta = owner["metadata"]
    ns, name = meta["namespace"], meta["name"]
    auto = spec.auto_tune
    store = store_of(spec)
    assert auto is not None and store is not None, "render only a valid spec.autoTune"
    px = spec.proxy
    container: Obj = {
        "name": "tune",
        "image": px.image,
        "command": ["tierguard"],
        "args": tune_args(ns, name, store, auto),
        "securityContext": restricted_security_context(),
    }
    if px.env:
        container["env"] = [e.to_yaml_dict() for e in px.env]
    if px.secret_mounts:
        container["volumeMounts"] = secret_volume_mounts(px)
    pod: Obj = {
        "serviceAccountName": tune_name(name),
        "restartPolicy": "Never",
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if px.secret_mounts:
        pod["volumes"] = secret_volumes(px)
    md = _metadata(owner)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": md,
        "spec": {
            "schedule": schedule(ns, name, auto),
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "suspend": False,
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": md["labels"]},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
                    "template": {"metadata": {"labels": md["labels"]}, "spec": pod},
                },
            },
        },
    }


def children(owner: Mapping[str, Any], spec: CascadePolicySpec) -> list[Obj]:
    """The autoTune children, the identity first (the CronJob's pods run as it); none when off."""
    if spec.auto_tune is None:
        return []
    return [service_account(owner), role(owner), role_binding(owner), cron_job(owner, spec)]


def suspend_patch() -> Obj:
    """A merge patch stopping the CronJob of a policy whose ``autoTune`` was removed."""
    return {"spec": {"suspend": True}}


def cron_job_path(namespace: str, name: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/cronjobs/{tune_name(name)}"
