"""What one analysis interval saw: the input of :func:`tierguard.rollout.decide.decide`.

Built by :func:`tierguard.rollout.analysis.observe` from a metrics provider, or by hand in tests.
Four verdicts per check, kept apart on purpose:

``PASS``     the value is within its bound(s)
``BREACH``   the value violates a bound: the only verdict that counts toward a rollback
``NO_DATA``  the query returned nothing (or NaN), or the stable revision has no value to compare to
``ERROR``    the provider was unreachable or answered badly (or the query is malformed)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "PASS"
    BREACH = "BREACH"
    NO_DATA = "NO_DATA"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Check:
    """One objective of one SLO, evaluated for one tier (``tier=None``: revision-wide)."""

    slo: str
    objective: str
    tier: str | None
    revision: str
    verdict: Verdict
    value: float | None = None
    bound: float | None = None
    stable_value: float | None = None
    message: str = ""

    def describe(self) -> str:
        where = f"tier {self.tier}" if self.tier else "all tiers"
        text = f"{self.slo}/{self.objective} ({where}, revision {self.revision})"
        if self.value is not None:
            text += f" = {self.value:.6g}"
        if self.bound is not None:
            text += f", bound {self.bound:.6g}"
        return text + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class ShadowObservation:
    """What one interval saw for the shadow rate (from :mod:`.shadow_observe`, for :mod:`.shadow_rate`).

    Attributes:
        accepted_per_second: per cheaper tier of the canary, answers it accepted per second in the
            window; None for no data.
        cost_per_call: USD per shadow call (None: not observed).
        other_spend_per_hour: the other revisions' (the stable's) observed shadow spend.
        error: the metrics provider failed (unreachable, or a bad query); nothing else is set.
        canary_weight: the canary's weight while this was observed (None: unknown).
    """

    accepted_per_second: Mapping[str, float | None] = field(default_factory=dict)
    cost_per_call: float | None = None
    other_spend_per_hour: float = 0.0
    error: str | None = None
    canary_weight: int | None = None

    def at_weight(self, weight: int) -> ShadowObservation:
        """The traffic expected at canary ``weight``: the canary's scaled by weight / the observed
        weight, the stable's spend by the stable's share (a step advanced by the same analysis)."""
        seen = self.canary_weight
        if seen is None or seen == weight or not 0 < seen < 100:
            return self
        canary, stable = weight / seen, (100 - weight) / (100 - seen)
        return replace(
            self,
            accepted_per_second={
                t: None if r is None else r * canary for t, r in self.accepted_per_second.items()
            },
            other_spend_per_hour=self.other_spend_per_hour * stable,
            canary_weight=weight,
        )


@dataclass(frozen=True)
class Observations:
    """The result of querying the metrics provider for one analysis interval.

    Attributes:
        checks: every objective of every referenced SLO, per tier of the canary.
        config_current: whether every proxy reports the config hash rendered for this status (an
            interval only counts when it does).
        config_message: why the config is not current (for the condition message).
        samples: canary requests per tier in the query window (the entry tier always included).
        provider_error: set when the provider failed as a whole (e.g. unreachable).
        shadow: what the shadow-rate choice needs (with ``spec.proxy.shadowBudget`` only).
    """

    checks: tuple[Check, ...] = ()
    config_current: bool = True
    config_message: str = ""
    samples: Mapping[str, int] = field(default_factory=dict)
    provider_error: str | None = None
    shadow: ShadowObservation | None = None

    def with_verdict(self, verdict: Verdict) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict is verdict)

    @property
    def errors(self) -> tuple[Check, ...]:
        return self.with_verdict(Verdict.ERROR)

    @property
    def breaches(self) -> tuple[Check, ...]:
        return self.with_verdict(Verdict.BREACH)

    @property
    def no_data(self) -> tuple[Check, ...]:
        return self.with_verdict(Verdict.NO_DATA)
