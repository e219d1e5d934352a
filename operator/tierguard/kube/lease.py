"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two operator replicas never both act.

The rules are client-go's ``leaderelection``: the leader renews the Lease every ``retry_period``;
a follower takes the Lease over once it has seen the same record unchanged for
``lease_duration`` by its *own* clock (never comparing clocks across machines); every write
carries the ``resourceVersion`` it read, so of two followers racing for an expired Lease one
wins and the other gets a conflict. A leader that has not renewed for ``renew_deadline`` (shorter
than ``lease_duration``) stops acting before anyone else may start. On a clean stop the leader
releases the Lease, and a follower takes over after one ``retry_period`` instead of a whole
``lease_duration``.

:func:`lease_action` and :func:`lease_record` are pure; :class:`LeaderElector` does the I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .client import KubeApi, KubeError

log = logging.getLogger("tierguard.operator.lease")

LEASE_API = "/apis/coordination.k8s.io/v1"

Action = Literal["create", "renew", "acquire", "wait"]


@dataclass(frozen=True)
class Timings:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} / {self.renew_deadline:g} / {self.lease_duration:g} s"
            )


@dataclass(frozen=True)
class Record:
    """The part of a Lease that decides who leads."""

    holder: str
    duration_s: float
    renew_time: str  # as written: a change of it is a renewal
    transitions: int
    resource_version: str


def parse_lease(obj: dict[str, Any] | None) -> Record | None:
    if obj is None:
        return None
    spec = obj.get("spec") or {}
    return Record(
        holder=str(spec.get("holderIdentity") or ""),
        duration_s=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
    )


def lease_action(record: Record | None, me: str, seen_unchanged_for: float) -> Action:
    """What to do with the Lease as read: ``seen_unchanged_for`` is how long (by this process's
    clock) the same holder and renew time have been observed."""
    if record is None:
        return "create"
    if record.holder == me:
        return "renew"
    if not record.holder or seen_unchanged_for >= record.duration_s:
        return "acquire"  # released, or its holder stopped renewing
    return "wait"


def micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_record(
    me: str, now: datetime, timings: Timings, previous: Record | None, *, release: bool = False
) -> dict[str, Any]:
    """The Lease ``spec`` to write: held (or, with ``release``, given up) by ``me``."""
    taking_over = previous is not None and previous.holder != me
    spec: dict[str, Any] = {
        "holderIdentity": None if release else me,
        "leaseDurationSeconds": 1 if release else max(1, round(timings.lease_duration)),
        "renewTime": micro_time(now),
        "leaseTransitions": (previous.transitions if previous else 0) + (1 if taking_over else 0),
    }
    if previous is None or taking_over:
        spec["acquireTime"] = micro_time(now)
    return spec


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings or Timings()
        self.clock = clock
        self.wall = wall
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self.last_renewal: float | None = None  # clock() of the last successful write as leader

    @property
    def path(self) -> str:
        return f"{LEASE_API}/namespaces/{self.namespace}/leases/{self.name}"

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this process holds the Lease afterwards."""
        try:
            record = parse_lease(self.api.get_or_none(self.path))
        except KubeError as err:
            log.warning("reading the Lease %s/%s failed: %s", self.namespace, self.name, err)
            return False
        now = self.clock()
        if record is not None and (record.holder, record.renew_time) != self._seen:
            self._seen, self._seen_at = (record.holder, record.renew_time), now
        action = lease_action(record, self.identity, now - self._seen_at)
        if action == "wait":
            return False
        spec = lease_record(self.identity, self.wall(), self.timings, record)
        try:
            if record is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec,
                }
                self.api.request("POST", f"{LEASE_API}/namespaces/{self.namespace}/leases", body)
            else:
                patch = {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}
                self.api.merge_patch(self.path, patch)
        except KubeError as err:
            if err.conflict or err.status in (404, 409):
                return False  # another replica wrote first: read again next round
            log.warning("writing the Lease %s/%s failed: %s", self.namespace, self.name, err)
            return False
        if action == "acquire":
            log.info("took over the Lease %s/%s from %r", self.namespace, self.name, record and record.holder)
        self.last_renewal = self.clock()
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process leads (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            if not announced and self._seen is not None:
                log.info("waiting for the Lease %s/%s held by %r", self.namespace, self.name, self._seen[0])
                announced = True
            stop.wait(self.timings.retry_period)
        return False

    def keep_renewing(self, stop: threading.Event, lost: Callable[[], None]) -> None:
        """Renew every ``retry_period`` until ``stop``; call ``lost`` once no renewal succeeded for
        ``renew_deadline`` (the caller must then stop acting at once)."""
        while not stop.wait(self.timings.retry_period):
            if self.try_acquire_or_renew():
                continue
            since = self.clock() - (self.last_renewal or 0.0)
            if since >= self.timings.renew_deadline:
                lost()
                return

    def release(self) -> None:
        """Give the Lease up if this process still holds it (a clean stop)."""
        try:
            record = parse_lease(self.api.get_or_none(self.path))
            if record is None or record.holder != self.identity:
                return
            spec = lease_record(self.identity, self.wall(), self.timings, record, release=True)
            self.api.merge_patch(
                self.path, {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}
            )
            log.info("released the Lease %s/%s", self.namespace, self.name)
        except KubeError as err:
            log.warning("releasing the Lease %s/%s failed: %s", self.namespace, self.name, err)
