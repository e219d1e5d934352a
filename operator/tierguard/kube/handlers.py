"""kopf handlers for CascadePolicy: thin glue around the pure rollout core.

One function does all the work, :meth:`Reconciler.reconcile`, for one policy at a time (a lock per
policy), in a worker thread (the Prometheus client is synchronous)::

    read    GET the policy (fresh: the status we wrote last tick, not a lagging watch copy)
    check   schema-valid but unusable spec?  -> Ready=False with the reason, nothing else touched
    act     a manual action annotation (promote/abort/resume)   -> apply_manual
            a new revision (content hash of the cascade)          -> start_rollout
    observe if an analysis is due: query the metrics provider     -> Observations
    decide  decide(...) -> next_status(...)
    apply   status (merge patch with a resourceVersion precondition), then the children
            (server-side apply, only what changed since the last apply, and everything again
            every RESYNC_SECONDS to repair hand edits)
    record  an Event for every transition

It is called by the create/update/resume handlers (spec or annotation changed: no analysis) and by
a per-policy daemon that sleeps until the next analysis is due (``rollout.interval``) or until it
is woken by a change. Steady state costs two API calls per interval: one GET, one status PATCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import kopf

from .. import API_GROUP, API_VERSION
from ..policy import CascadePolicySpec, ProxyConfig, QualitySLOSpec, Revision
from ..rollout import conditions as cond
from ..rollout.approval import TUNED_ANNOTATION, TunedRecord, awaits_approval, gated_rollout
from ..rollout.decide import (
    Decision,
    Hold,
    ManualActionError,
    Promote,
    Rollback,
    analysis_due_at,
    apply_manual,
    clear_invalid,
    decide,
    mark_invalid,
    needs_observations,
    next_status,
    start_rollout,
)
from ..rollout.observations import Observations
from ..rollout.risks import flag_risks, risk_event
from ..rollout.status import PolicyStatus, StatusError, parse_status
from . import autotune, render
from .client import (
    ACTION_ANNOTATION,
    PLURAL_POLICIES,
    PLURAL_SLOS,
    KubeApi,
    KubeError,
    policy_path,
    slo_path,
)
from .validate import validate_policy

log = logging.getLogger("tierguard.operator")
Logger = logging.Logger | logging.LoggerAdapter[Any]

ACTION_VALUES: dict[str, tuple[str, bool]] = {
    "promote": ("promote", False),
    "promote --full": ("promote", True),
    "promote-full": ("promote", True),
    "abort": ("abort", False),
    "resume": ("resume", False),
}
COMPONENT = "tierguard-operator"
MAX_IDLE_SECONDS = 60.0  # a daemon re-reconciles at least this often (drift repair, deadlines)
RETRY_SECONDS = 2.0
RESYNC_SECONDS = 600.0  # children are applied again at least this often (repairs hand edits)
SUSPENDED = "suspended"  # the fingerprint recorded for a tune CronJob suspended (or never there)


class Observer(Protocol):
    """Gathers one analysis interval's observations (queries the metrics provider)."""

    def __call__(
        self,
        *,
        policy: str,
        namespace: str,
        spec: CascadePolicySpec,
        status: PolicyStatus,
        slos: Mapping[str, QualitySLOSpec],
        now: datetime,
    ) -> Observations: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


Key = tuple[str, str]


@dataclass
class ReconcileResult:
    """What one reconcile did (for logs and tests)."""

    next_due: datetime | None = None
    status: PolicyStatus | None = None
    decision: Decision | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    api_calls: int = 0
    seconds: float = 0.0


@dataclass
class _PolicyLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # reconciles holding or waiting for the lock


class Conflict(Exception):
    """The policy changed between our read and our write: reconcile again."""


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        observer: Observer,
        *,
        clock: Callable[[], datetime] = utcnow,
        service_monitors: bool | None = None,
    ) -> None:
        self.api = api
        self.observer = observer
        self.clock = clock
        self._service_monitors = service_monitors
        self._sm_checked: tuple[bool, float] | None = None
        # Reconciles run in worker threads, forget() on the event loop: ``_guard`` protects both
        # maps below and is only ever held for a dict operation.
        self._guard = threading.Lock()
        self._locks: dict[Key, _PolicyLock] = {}  # only while a reconcile holds or waits for it
        # policy -> kind -> (fingerprint, monotonic time) of the last apply
        self._applied: dict[Key, dict[str, tuple[str, float]]] = {}
        self.resync_seconds = RESYNC_SECONDS
        self.slo_cache: dict[Key, dict[str, Any]] = {}  # fed by the QualitySLO watch
        self.wakers: dict[Key, Callable[[], None]] = {}
        self.instance = socket.gethostname()

    # --- plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, key: Key) -> Iterator[None]:
        """Serialise the reconciles of one policy. The lock exists only while a reconcile holds or
        waits for it, so deleted policies leave nothing behind."""
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = _PolicyLock()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._locks[key]

    def forget(self, key: Key, waker: Callable[[], None] | None = None) -> None:
        """Drop what is remembered about a policy (its daemon stopped: deleted, or shutdown).
        ``waker``: only unregister this one (a newer daemon of the same policy may have replaced
        it)."""
        with self._guard:
            self._applied.pop(key, None)
        if waker is None or self.wakers.get(key) is waker:
            self.wakers.pop(key, None)

    def _last_applied(self, key: Key, kind: str) -> tuple[str, float] | None:
        with self._guard:
            return self._applied.get(key, {}).get(kind)

    def _record_applied(self, key: Key, kind: str, fingerprint: str) -> None:
        with self._guard:
            self._applied.setdefault(key, {})[kind] = (fingerprint, time.monotonic())

    def wake(self, key: Key) -> None:
        waker = self.wakers.get(key)
        if waker is not None:
            waker()

    def wake_namespace(self, namespace: str) -> None:
        for key in list(self.wakers):
            if key[0] == namespace:
                self.wake(key)

    def service_monitors_supported(self) -> bool:
        """Whether the Prometheus Operator's ServiceMonitor CRD is served (discovery, asked again
        every ``resync_seconds`` unless fixed by the constructor)."""
        if self._service_monitors is not None:
            return self._service_monitors
        now = time.monotonic()
        if self._sm_checked is None or now - self._sm_checked[1] >= self.resync_seconds:
            try:
                found = self.api.has_resource(
                    render.SERVICE_MONITOR_GROUP, render.SERVICE_MONITOR_VERSION, "servicemonitors"
                )
            except KubeError as err:
                log.warning("cannot discover ServiceMonitor support (assuming none): %s", err)
                found = False
            self._sm_checked = (found, now)
        return self._sm_checked[0]

    def _slo_bodies(self, namespace: str, names: list[str]) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        for name in names:
            body = self.slo_cache.get((namespace, name))
            if body is None:  # not seen on the watch (yet): ask
                body = self.api.get_or_none(slo_path(namespace, name))
                if body is not None:
                    self.slo_cache[(namespace, name)] = body
            out[name] = body
        return out

    # --- the reconcile ------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, *, analyse: bool) -> ReconcileResult:
        """Reconcile one policy; retries a few times when the object changed under us."""
        key = (namespace, name)
        t0 = time.monotonic()
        calls0 = self.api.call_count()
        with self.lock(key):
            for attempt in range(4):
                try:
                    result = self._reconcile(namespace, name, analyse=analyse)
                    break
                except Conflict:
                    if attempt == 3:
                        raise
                    log.debug("%s/%s: conflict, reconciling again", namespace, name)
        result.api_calls = self.api.call_count() - calls0
        result.seconds = time.monotonic() - t0
        return result

    def _reconcile(self, namespace: str, name: str, *, analyse: bool) -> ReconcileResult:
        result = ReconcileResult()
        obj = self.api.get_or_none(policy_path(namespace, name))
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            with self._guard:
                self._applied.pop((namespace, name), None)
            return result
        meta = obj["metadata"]
        generation = int(meta.get("generation") or 0)
        rv = str(meta["resourceVersion"])
        now = self.clock()
        events = result.events

        raw_status = obj.get("status") or {}
        try:
            old = parse_status(raw_status)
            stored = old.to_dict() if raw_status else {}
        except StatusError as err:
            events.append(("Warning", "StatusUnreadable", f"{err}; starting from a fresh status"))
            old, stored = PolicyStatus(), dict(raw_status)
        status = old

        # -- check
        slo_names = [
            str(s.get("name")) for s in (obj.get("spec") or {}).get("slos") or [] if isinstance(s, dict)
        ]
        checked = validate_policy(name, obj.get("spec"), self._slo_bodies(namespace, slo_names))
        if not checked.ok:
            problem = checked.problem or "invalid spec"
            status = mark_invalid(status, problem, now, generation)
            if old.phase != "Invalid" or old.message != problem:
                events.append(("Warning", "InvalidSpec", problem))
            rv = self._write_status(obj, stored, status, rv)
            self._post_events(obj, events)
            result.status = status
            return result
        spec = checked.spec
        assert spec is not None
        if status.phase == "Invalid":
            status = clear_invalid(status, now, generation)
            events.append(("Normal", "SpecValid", "the spec is valid again"))
        flagged = flag_risks(status, checked.risks, now, generation)
        if (risk := risk_event(status, flagged)) is not None:
            events.append(risk)
        status = flagged

        # -- a new revision (idempotent when the cascade did not change); one that `tierguard tune`
        # wrote with manual approval waits at its first step for a person
        revision = Revision.of(spec.cascade())
        tuned = TunedRecord.parse((meta.get("annotations") or {}).get(TUNED_ANNOTATION))
        rollout = gated_rollout(spec.rollout, tuned, revision.name)
        before = status.canary_revision
        status = start_rollout(status, revision, now, rollout, generation)
        if status.canary_revision != before and tuned is not None and awaits_approval(tuned, revision.name):
            events.append(("Normal", "AwaitingApproval", approval_message(name, tuned, status.canary_weight)))

        # -- a manual action
        raw_action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
        if raw_action is not None:
            # Remove it first (at most once: a crash after this loses the action, never repeats it).
            rv = self._clear_action(namespace, name, rv)
            parsed = ACTION_VALUES.get(raw_action.strip().lower())
            if parsed is None:
                events.append(
                    (
                        "Warning",
                        "ActionRejected",
                        f"unknown action {raw_action!r}: use promote, abort or resume",
                    )
                )
            else:
                action, full = parsed
                try:
                    manual = apply_manual(
                        action,  # type: ignore[arg-type]
                        status,
                        rollout,
                        now,
                        full=full,
                        token=raw_action,
                        generation=generation,
                    )
                except ManualActionError as err:
                    events.append(("Warning", "ActionRejected", f"{raw_action}: {err}"))
                else:
                    status = manual.status
                    events.append(("Normal", manual.reason, manual.message))

        # -- observe + decide
        obs: Observations | None = None
        if analyse and needs_observations(rollout, status, now):
            obs = self.observer(
                policy=name, namespace=namespace, spec=spec, status=status, slos=checked.slos, now=now
            )
        decision = decide(rollout, status, obs, now)
        status = next_status(status, decision, now, generation)
        result.decision = decision
        if status.observed_generation != generation:
            status = status.model_copy(update={"observed_generation": generation})

        # -- apply: the proxy config this status stands for
        config = render.proxy_config(name, namespace, spec, status)
        if config is not None:
            status = status.model_copy(update={"config_hash": config.config_hash()})

        events.extend(_transition_events(old, status, decision))
        rv = self._write_status(obj, stored, status, rv)
        if config is not None:
            self._apply_children(obj, spec, config)
        self._post_events(obj, events)

        result.status = status
        result.next_due = analysis_due_at(rollout, status)
        return result

    # --- writes -------------------------------------------------------------------------------

    def _clear_action(self, namespace: str, name: str, rv: str) -> str:
        patch = {"metadata": {"resourceVersion": rv, "annotations": {ACTION_ANNOTATION: None}}}
        try:
            out = self.api.merge_patch(policy_path(namespace, name), patch)
        except KubeError as err:
            if err.conflict:
                raise Conflict() from None
            raise
        return str(out["metadata"]["resourceVersion"])

    def _write_status(self, obj: dict[str, Any], stored: dict[str, Any], new: PolicyStatus, rv: str) -> str:
        """Merge-patch the status from ``stored`` (what the object has) to ``new``; the
        resourceVersion precondition turns a concurrent change into :class:`Conflict`."""
        diff = merge_diff(stored, new.to_dict())
        if not diff:
            return rv
        meta = obj["metadata"]
        body = {"metadata": {"resourceVersion": rv}, "status": diff}
        try:
            out = self.api.merge_patch(policy_path(meta["namespace"], meta["name"], "status"), body)
        except KubeError as err:
            if err.conflict:
                raise Conflict() from None
            raise
        return str(out["metadata"]["resourceVersion"])

    def _apply_children(self, owner: dict[str, Any], spec: CascadePolicySpec, config: ProxyConfig) -> None:
        key = (owner["metadata"]["namespace"], owner["metadata"]["name"])
        kids = render.children(owner, spec, config, with_service_monitor=self.service_monitors_supported())
        kids += autotune.children(owner, spec)
        for child in kids:
            fingerprint = _fingerprint(child)
            last = self._last_applied(key, child["kind"])
            if (
                last is not None
                and last[0] == fingerprint
                and time.monotonic() - last[1] < self.resync_seconds
            ):
                continue
            self.api.apply(child)
            self._record_applied(key, child["kind"], fingerprint)
            if child["kind"] == "ConfigMap":
                self._nudge_proxy_pods(key, config.config_hash())
        if spec.auto_tune is None:  # after the proxies' children: they are the critical path
            self._suspend_tune(owner)

    def _nudge_proxy_pods(self, key: Key, config_hash: str) -> None:
        """Annotate the policy's proxy pods with the config hash just written to the ConfigMap.

        A pod update makes the kubelet sync that pod at once, and the sync re-reads its ConfigMap
        volumes, so the proxy sees a new weight about a second after the ConfigMap changes instead
        of after the kubelet's next periodic sync (up to a minute or more with its defaults; see
        docs/operator.md, "Time to rollback"). Best effort: a pod that is gone, or a Role without
        ``pods`` (an older chart), only costs the faster path, never the reconcile."""
        namespace, policy = key
        selector = ",".join(f"{k}={v}" for k, v in render.selector_labels(policy).items())
        try:
            pods = self.api.get(f"/api/v1/namespaces/{quote(namespace)}/pods?labelSelector={quote(selector)}")
        except KubeError as err:
            log.warning("%s/%s: cannot list the proxy pods to nudge them (%s)", namespace, policy, err)
            return
        patch = {"metadata": {"annotations": {render.ANNOTATION_CONFIG_HASH: config_hash}}}
        for pod in pods.get("items", []):
            meta = pod.get("metadata", {})
            if (
                meta.get("deletionTimestamp")
                or (meta.get("annotations") or {}).get(render.ANNOTATION_CONFIG_HASH) == config_hash
            ):
                continue
            path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(meta['name'])}"
            try:
                self.api.merge_patch(path, patch)
            except KubeError as err:
                if not err.not_found:
                    log.warning("%s/%s: cannot annotate pod %s (%s)", namespace, policy, meta["name"], err)

    def _suspend_tune(self, owner: dict[str, Any]) -> None:
        """``spec.autoTune`` is off: suspend a CronJob a previous spec may have left (the operator
        cannot delete). Once per policy and operator run; a missing CronJob is the usual answer."""
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        last = self._last_applied(key, "CronJob")
        if last is not None and last[0] == SUSPENDED:
            return
        try:
            self.api.merge_patch(autotune.cron_job_path(*key), autotune.suspend_patch())
        except KubeError as err:
            if not err.not_found:
                log.warning("%s/%s: cannot suspend the tune CronJob: %s", *key, err)
        self._record_applied(key, "CronJob", SUSPENDED)

    def _post_events(self, obj: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
        for type_, reason, message in events:
            log_fn = log.warning if type_ == "Warning" else log.info
            log_fn("%s/%s %s: %s", obj["metadata"]["namespace"], obj["metadata"]["name"], reason, message)
            try:
                body = event_body(obj, type_, reason, message, self.clock(), self.instance)
                self.api.request("POST", f"/api/v1/namespaces/{obj['metadata']['namespace']}/events", body)
            except KubeError as err:  # events are best effort
                log.warning("cannot post event %s: %s", reason, err)


def approval_message(name: str, tuned: TunedRecord, weight: int) -> str:
    return (
        f"revision {tuned.revision} ({tuned.summary()}) waits for approval at the first step "
        f"(canary weight {weight}%): tierguard promote {name}, or tierguard abort {name}"
    )


def _fingerprint(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def merge_diff(old: Any, new: Any) -> dict[str, Any]:
    """An RFC 7386 merge patch turning ``old`` into ``new`` (dicts; lists replaced wholesale)."""
    out: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        out[k] = None
    for k, v in new.items():
        if k not in old:
            out[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_diff(old[k], v)
            if sub:
                out[k] = sub
        elif v != old[k]:
            out[k] = v
    return out


def event_body(
    obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime, instance: str
) -> dict[str, Any]:
    meta = obj["metadata"]
    ts = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "CascadePolicy",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": f"{API_GROUP}/operator",
        "reportingInstance": instance[:128],
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }


def _transition_events(
    old: PolicyStatus, new: PolicyStatus, decision: Decision | None
) -> list[tuple[str, str, str]]:
    """Events for what changed between two statuses (manual actions are recorded by the caller)."""
    out: list[tuple[str, str, str]] = []
    manual = new.last_action is not None and new.last_action != old.last_action
    if new.canary_revision != old.canary_revision and new.canary_revision is not None:
        out.append(("Normal", "NewRevision", new.message or f"rolling out revision {new.canary_revision}"))
    elif not manual:
        if isinstance(decision, Rollback):
            out.append(("Warning", "RolledBack", decision.message))
        elif isinstance(decision, Promote):
            out.append(("Normal", "Promoted", decision.message))
        elif new.canary_weight != old.canary_weight or new.current_step != old.current_step:
            out.append(("Normal", "StepAdvanced", new.message or f"canary weight {new.canary_weight}%"))
        elif isinstance(decision, Hold):
            if decision.failed_check:
                out.append(("Warning", "CheckFailed", decision.message))
            else:
                before = cond.get_condition(old.conditions, cond.PROGRESSING)
                # once stalled, Progressing's reason is ProgressDeadlineExceeded: no Hold Event per tick
                stalled_before = decision.stalled and cond.is_true(old.conditions, cond.DEGRADED)
                if not stalled_before and (before is None or before.reason != decision.reason):
                    out.append(("Normal", f"Hold{decision.reason}", decision.message))
            if decision.stalled and not cond.is_true(old.conditions, cond.DEGRADED):
                out.append(("Warning", "ProgressDeadlineExceeded", decision.message))
    if new.phase != old.phase and not out and not manual:
        out.append(("Normal", new.phase, new.message or f"phase {old.phase} -> {new.phase}"))
    return out


# --- kopf wiring --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register the handlers for ``reconciler`` in ``registry``."""
    group, version = API_GROUP, API_VERSION

    async def _reconcile_now(namespace: str, name: str, analyse: bool, logger: Logger) -> None:
        try:
            res = await asyncio.to_thread(reconciler.reconcile, namespace, name, analyse=analyse)
        except (Conflict, KubeError) as err:
            raise kopf.TemporaryError(str(err), delay=RETRY_SECONDS) from None
        logger.debug("reconciled in %.3fs with %d API calls", res.seconds, res.api_calls)
        reconciler.wake((namespace, name))

    @kopf.on.resume(group, version, PLURAL_POLICIES, registry=registry)
    @kopf.on.create(group, version, PLURAL_POLICIES, registry=registry)
    @kopf.on.update(group, version, PLURAL_POLICIES, registry=registry)
    async def policy_changed(namespace: str | None, name: str, logger: Logger, **_: Any) -> None:
        await _reconcile_now(namespace or "", name, False, logger)

    @kopf.daemon(
        group,
        version,
        PLURAL_POLICIES,
        registry=registry,
        cancellation_backoff=2.0,
        cancellation_timeout=10.0,
    )
    async def analysis_loop(
        stopped: kopf.DaemonStopped, namespace: str | None, name: str, logger: Logger, **_: Any
    ) -> None:
        namespace = namespace or ""
        key = (namespace, name)
        woken = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(woken.set)

        reconciler.wakers[key] = wake
        try:
            while not stopped:
                woken.clear()
                delay = MAX_IDLE_SECONDS
                try:
                    res = await asyncio.to_thread(reconciler.reconcile, namespace, name, analyse=True)
                    if res.next_due is not None:
                        delay = (res.next_due - reconciler.clock()).total_seconds()
                    if res.decision is not None:
                        logger.debug(
                            "tick: %s in %.3fs, %d API calls",
                            type(res.decision).__name__,
                            res.seconds,
                            res.api_calls,
                        )
                except Exception as err:  # keep the loop alive; the next tick retries
                    logger.warning("analysis tick failed: %s", err)
                    delay = RETRY_SECONDS
                delay = min(max(delay, 0.05), MAX_IDLE_SECONDS)
                await _sleep(stopped, woken, delay)
        finally:
            reconciler.forget(key, wake)

    @kopf.on.event(group, version, PLURAL_SLOS, registry=registry)
    async def slo_event(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or ""
        key = (namespace, name)
        if event.get("type") == "DELETED":
            reconciler.slo_cache.pop(key, None)
        else:
            reconciler.slo_cache[key] = dict(event.get("object") or {})
        reconciler.wake_namespace(namespace)


async def _sleep(stopped: kopf.DaemonStopped, woken: asyncio.Event, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stopped and not woken.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), timeout=min(left, 0.5))


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings: bookkeeping in annotations under our own prefix, no automatic events (the
    reconciler posts its own), no cluster-wide scanning, a bounded watch timeout."""
    prefix = f"kopf.{API_GROUP}"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    # No cluster-wide observation of namespaces and CRDs: the operator serves the namespaces it is
    # given and the CRDs present at start, and needs no cluster-scoped permissions for kopf itself.
    settings.scanning.disabled = True
