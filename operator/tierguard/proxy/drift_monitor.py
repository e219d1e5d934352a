"""Live confidence drift: the ``tierguard_confidence_psi`` gauge.

For every (revision, tier) whose ``confidence.reference`` is set (``tierguard calibrate`` writes
it), the calibrated confidence of each answer the tier gives goes into a sliding window of the
last ``window`` answers (:class:`tierguard.drift.PSIWindow`, the same code and bins
``tierguard replay`` uses). Once the window is full, its PSI against the reference is exported,
recomputed after ``step`` new answers or, with fewer, after ``interval`` seconds.

Not watched: tiers without a reference, and capable-only revisions (they send every request
to the last tier, whose reference describes the escalated share of the traffic only). A partial
window exports nothing, so a tier with little traffic has no series until it has answered
``window`` times: an SLO on it reads "no data", never a noisy value.

Settings come from the environment, read once at start-up:

- ``TIERGUARD_PSI_WINDOW`` (default 500): answers per window.
- ``TIERGUARD_PSI_STEP`` (default 50): recompute after this many new answers.
- ``TIERGUARD_PSI_INTERVAL`` (default 10): or after this many seconds, if any new answer came.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..drift import CONFIDENCE_EDGES, PSIWindow
from ..errors import UserError
from ..policy import CAPABLE_ONLY, Revision

ENV_WINDOW = "TIERGUARD_PSI_WINDOW"
ENV_STEP = "TIERGUARD_PSI_STEP"
ENV_INTERVAL = "TIERGUARD_PSI_INTERVAL"


@dataclass(frozen=True)
class DriftSettings:
    window: int = 500
    step: int = 50
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("the PSI window must hold at least 1 answer")
        if self.step < 1:
            raise ValueError("the PSI step must be at least 1 answer")
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ValueError("the PSI interval must be a positive number of seconds")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DriftSettings:
        """Settings from ``TIERGUARD_PSI_*`` (defaults for unset ones); a bad value is a UserError."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            window=_positive_int(env, ENV_WINDOW, d.window),
            step=_positive_int(env, ENV_STEP, d.step),
            interval_s=_positive_float(env, ENV_INTERVAL, d.interval_s),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name}={text!r}: expected a positive whole number")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{name}={text!r}: expected a positive number of seconds")
    return value


class _Tracked:
    """One (revision, tier)'s window and the gauge child it sets."""

    __slots__ = ("child", "labels", "last_update", "pending", "reference", "source", "window")

    def __init__(self, reference: list[float], settings: DriftSettings, labels: tuple[str, str, str]) -> None:
        self.source = reference  # the policy's list object: a cheap identity check per answer
        self.reference = tuple(reference)
        self.window = PSIWindow(CONFIDENCE_EDGES, reference, window=settings.window, step=settings.step)
        self.labels = labels
        self.child: Any = None  # the labelled gauge, created when the first value is exported
        self.pending = 0  # answers since the last export
        self.last_update = -math.inf


class DriftMonitor:
    """Per-(revision, tier) PSI windows feeding a Prometheus gauge with labels policy, revision, tier.

    ``gauge`` is a ``prometheus_client.Gauge`` (anything with ``labels(...)`` returning an object
    with ``set``, and ``remove(...)``). Not thread-safe: the proxy calls it from its event loop.
    """

    def __init__(
        self,
        gauge: Any,
        settings: DriftSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gauge = gauge
        self.settings = settings or DriftSettings()
        self.clock = clock
        self._tracked: dict[tuple[str, int], _Tracked] = {}

    def observe(self, policy: str, revision: Revision, tier: int, confidence: float) -> float | None:
        """Add tier ``tier``'s calibrated ``confidence``; the PSI when the gauge was just updated."""
        if revision.mode == CAPABLE_ONLY:
            return None
        conf = revision.cascade.tiers[tier].confidence
        reference = conf.reference
        if reference is None:
            return None
        key = (revision.name, tier)
        t = self._tracked.get(key)
        if t is None or t.source is not reference or t.labels[0] != policy:
            t = self._track(key, policy, revision, tier, reference, t)
        t.window.add(confidence)
        t.pending += 1
        if not t.window.full:
            return None
        now = self.clock()
        if t.pending < self.settings.step and now - t.last_update < self.settings.interval_s:
            return None
        value = t.window.current()
        assert value is not None
        if t.child is None:
            t.child = self.gauge.labels(*t.labels)
        t.child.set(value)
        t.pending = 0
        t.last_update = now
        return value

    def _track(
        self,
        key: tuple[str, int],
        policy: str,
        revision: Revision,
        tier: int,
        reference: list[float],
        old: _Tracked | None,
    ) -> _Tracked:
        labels = (policy, revision.name, revision.cascade.tiers[tier].name)
        if old is not None and old.reference == tuple(reference) and old.labels == labels:
            old.source = reference  # the same content from a reloaded config: keep the window
            return old
        if old is not None:
            self._unexport(old)
        t = self._tracked[key] = _Tracked(reference, self.settings, labels)
        return t

    def _unexport(self, t: _Tracked) -> None:
        if t.child is not None:
            with contextlib.suppress(KeyError):  # already gone
                self.gauge.remove(*t.labels)
            t.child = None

    def retain(self, revisions: Iterable[str]) -> None:
        """Forget the windows (and gauge series) of revisions that are no longer served.

        Called when a configuration is applied: a rolled-back canary's last PSI must not linger,
        nor its old window count again if the same revision comes back.
        """
        keep = set(revisions)
        for key in [k for k in self._tracked if k[0] not in keep]:
            self._unexport(self._tracked.pop(key))

    def value(self, revision: str, tier: int) -> float | None:
        """The last exported PSI of (revision, tier), if any."""
        t = self._tracked.get((revision, tier))
        return None if t is None or t.child is None else t.window.last
