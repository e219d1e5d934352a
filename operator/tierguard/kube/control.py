"""``tierguard promote|abort|resume|status NAME [-n NS]``: manual control of a rollout.

``promote``, ``abort`` and ``resume`` set the annotation ``tierguard.io/action`` on the
CascadePolicy (exactly what a GitOps tool or ``kubectl annotate`` would do); the operator acts on
it, removes it and records the action in ``.status.lastAction``. With ``--wait`` the command waits
for that and prints the resulting status. ``status`` prints the rollout status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from ..errors import UserError
from ..rollout.approval import TUNED_ANNOTATION, TunedRecord
from .client import ACTION_ANNOTATION, KubeApi, KubeError, load_api_client, policy_path

ACTIONS = ("promote", "abort", "resume")


def configure(parser: argparse.ArgumentParser) -> None:
    command = parser.get_default("command")
    if command == "status":
        parser.add_argument("name", nargs="?", help="CascadePolicy name (omit to list all in the namespace)")
        parser.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    else:
        parser.add_argument("name", help="CascadePolicy name")
        if command == "promote":
            parser.add_argument(
                "--full",
                action="store_true",
                help="make the canary stable now (also after a rollback or abort), skipping the steps left",
            )
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="wait up to this long for the operator to act, then print the status",
        )
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--context", default=None, help="kubeconfig context")


def _default_namespace(kubeconfig: str | None, context: str | None) -> str:
    try:
        from kubernetes import config

        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        ctx = next((c for c in contexts if c["name"] == context), current) if context else current
        return str((ctx or {}).get("context", {}).get("namespace") or "default")
    except Exception:
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"


def _connect(args: argparse.Namespace) -> tuple[KubeApi, str]:
    try:
        api = KubeApi(load_api_client(args.kubeconfig, args.context), timeout=15.0)
    except Exception as err:
        raise UserError(f"cannot load Kubernetes credentials: {err}") from None
    ns = args.namespace or _default_namespace(args.kubeconfig, args.context)
    return api, ns


def _get(api: KubeApi, ns: str, name: str) -> dict[str, Any]:
    try:
        return dict(api.get(policy_path(ns, name)))
    except KubeError as err:
        raise _user_error(err, ns, name) from None


def _user_error(err: KubeError, ns: str, name: str | None) -> UserError:
    what = f"cascadepolicy {ns}/{name}" if name else f"cascadepolicies in namespace {ns}"
    if err.not_found:
        if name:
            return UserError(f"{what} not found")
        return UserError(f"{what}: the CRD is not installed ({err.message})")
    if err.status in (401, 403):
        return UserError(f"{what}: not allowed: {err.message}")
    if err.status == 0:
        return UserError(f"cannot reach the API server: {err.message}")
    return UserError(f"{what}: {err}")


def run(args: argparse.Namespace) -> int:
    api, ns = _connect(args)
    if args.command == "status":
        return _status(api, ns, args)
    action = args.command
    if action not in ACTIONS:
        raise UserError(f"unknown action {action!r}")
    before = _get(api, ns, args.name)
    requested = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = "promote --full" if action == "promote" and getattr(args, "full", False) else action
    patch = {"metadata": {"annotations": {ACTION_ANNOTATION: value}}}
    try:
        api.merge_patch(policy_path(ns, args.name), patch)
    except KubeError as err:
        raise _user_error(err, ns, args.name) from None
    print(f"cascadepolicy {ns}/{args.name}: {value} requested")
    if args.wait <= 0:
        return 0
    previous = ((before.get("status") or {}).get("lastAction") or {}).get("time")
    deadline = time.monotonic() + args.wait
    handled = False
    while time.monotonic() < deadline:
        obj = _get(api, ns, args.name)
        annotations = obj.get("metadata", {}).get("annotations") or {}
        last = (obj.get("status") or {}).get("lastAction") or {}
        if ACTION_ANNOTATION not in annotations:
            if last.get("time") != previous:
                print(format_status(obj))
                return 0
            # the operator removes the annotation before it writes the status: look twice
            event = _newest_event(api, ns, obj, requested) if handled else None
            handled = True
            if event is not None:  # handled without a change (rejected, or nothing to do)
                if event.get("type") == "Warning":
                    raise UserError(f"the operator rejected {action}: {event.get('message', '')}")
                print(f"{event.get('reason')}: {event.get('message', '')}")
                return 0
        time.sleep(0.5)
    raise UserError(f"the operator did not act on {action} within {args.wait:g}s (is it running?)")


def _newest_event(api: KubeApi, ns: str, obj: dict[str, Any], since: str) -> dict[str, Any] | None:
    """The newest event about ``obj`` since ``since`` (an RFC 3339 second), if any."""
    uid = obj["metadata"]["uid"]
    try:
        events = api.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.uid%3D{uid}")
    except KubeError:
        return None
    items = sorted(
        (e for e in events.get("items", []) if (e.get("lastTimestamp") or "") >= since),
        key=lambda e: (e.get("lastTimestamp") or "", e["metadata"].get("resourceVersion", "")),
    )
    return dict(items[-1]) if items else None


def _status(api: KubeApi, ns: str, args: argparse.Namespace) -> int:
    if args.name:
        objs = [_get(api, ns, args.name)]
    else:
        try:
            objs = list(api.get(policy_path(ns)).get("items", []))
        except KubeError as err:
            raise _user_error(err, ns, None) from None
    if args.output == "json":
        doc: Any = objs[0] if args.name else {"items": objs}
        json.dump(_status_doc(doc) if args.name else [_status_doc(o) for o in objs], sys.stdout, indent=2)
        print()
        return 0
    if args.output == "yaml":
        data = _status_doc(objs[0]) if args.name else [_status_doc(o) for o in objs]
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    if args.name:
        print(format_status(objs[0]))
    else:
        print(format_table(objs))
    return 0


def _status_doc(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "generation": meta.get("generation"),
        "status": obj.get("status") or {},
    }


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    s = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{max(s, 0)}s"


def format_table(objs: list[dict[str, Any]]) -> str:
    rows = [["NAME", "PHASE", "WEIGHT", "STEP", "STABLE", "CANARY", "READY", "AGE"]]
    for o in objs:
        st = o.get("status") or {}
        conditions = st.get("conditions") or []
        ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        rows.append(
            [
                o["metadata"]["name"],
                str(st.get("phase", "-")),
                str(st.get("canaryWeight", "-")),
                _step(o),
                str(st.get("stableRevision", "-")),
                str(st.get("canaryRevision") or "-"),
                str(ready.get("status", "-")),
                _age(o["metadata"].get("creationTimestamp")),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _step(obj: dict[str, Any]) -> str:
    """``2/5`` (1-based, of the spec's steps)."""
    st = obj.get("status") or {}
    if "currentStep" not in st or st.get("phase") in (None, "Pending", "Invalid"):
        return "-"
    steps = ((obj.get("spec") or {}).get("rollout") or {}).get("steps")
    n = len(steps) if isinstance(steps, list) else 5  # the default steps
    return f"{int(st['currentStep']) + 1}/{n}"


def format_status(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    st = obj.get("status") or {}
    lines = [
        f"CascadePolicy {meta.get('namespace')}/{meta.get('name')}"
        f" (generation {meta.get('generation')}, observed {st.get('observedGeneration', '-')})",
        f"  phase:          {st.get('phase', '-')}",
        f"  stable:         {st.get('stableRevision', '-')}",
        f"  canary:         {st.get('canaryRevision') or '-'}",
        f"  canary weight:  {st.get('canaryWeight', '-')}%",
        f"  step:           {_step(obj)}",
        f"  failed checks:  {st.get('failedChecks', 0)}",
    ]
    if st.get("configHash"):
        lines.append(f"  config hash:    {st['configHash']}")
    last = st.get("lastAction")
    if last:
        lines.append(f"  last action:    {last.get('action')} at {last.get('time')}")
    tuned = TunedRecord.parse((meta.get("annotations") or {}).get(TUNED_ANNOTATION))
    if tuned is not None:
        lines.append(
            f"  tuned:          revision {tuned.revision} at {tuned.time}, {tuned.summary()} "
            f"(approval {tuned.approval})"
        )
    conds = st.get("conditions") or []
    if conds:
        lines.append("  conditions:")
        for c in conds:
            lines.append(f"    {c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message', '')}")
    analysis = st.get("lastAnalysis") or {}
    checks = analysis.get("checks") or []
    if analysis:
        lines.append(f"  last analysis:  {analysis.get('time', '-')} -> {analysis.get('result', '-')}")
        if analysis.get("message"):
            lines.append(f"                  {analysis['message']}")
        for ch in checks:
            lines.append(
                "    {slo}/{objective} tier={tier} revision={revision}: "
                "value={value} bound={bound} -> {verdict}".format(
                    slo=ch.get("slo", "-"),
                    objective=ch.get("objective", "-"),
                    tier=ch.get("tier", "-"),
                    revision=ch.get("revision", "-"),
                    value=ch.get("value", "-"),
                    bound=ch.get("bound", "-"),
                    verdict=ch.get("verdict", "-"),
                )
            )
    return "\n".join(lines)
