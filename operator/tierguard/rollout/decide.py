"""The rollout decision: pure functions from (spec, status, observations, time) to what to do.

No I/O here. The reconciler's loop per tick is::

    status = parse_status(obj["status"])
    if needs_observations(spec.rollout, status, now):
        obs = observe(...)                      # tierguard.rollout.analysis (queries Prometheus)
    decision = decide(spec.rollout, status, obs, now)
    status = next_status(status, decision, now)  # then render + apply the proxy config, record events

Semantics
---------
* A rollout walks ``spec.rollout.steps`` (canary weights, default 5, 10, 25, 50, 100). Each step
  may pause: a duration (the step cannot advance before it has elapsed) or ``indefinite`` (it only
  advances on a manual ``promote``/``resume``). Analysis keeps running during pauses, so a breach
  still rolls back.
* Analysis is due one ``interval`` after the later of the step's start and the previous analysis
  (up to a tenth of an interval, at most 1s, early is accepted to absorb timer jitter; analysis
  times are recorded as they happened). Calling :func:`decide` more often is harmless: it
  answers :class:`Wait`. The query window is the interval itself.
* An interval counts only if every proxy reports the config hash rendered for the current status.
* Inconclusive intervals :class:`Hold` with a distinct reason and never promote or roll back:
  ``StaleConfig`` (a proxy runs another config), ``ProviderError`` (Prometheus unreachable or a
  query failed), ``TooFewSamples`` (a checked tier saw fewer than ``minSamples`` canary
  requests), ``NoData`` (a query returned nothing).
* The sample gate applies per check, to the check's own tier (a revision-wide check: the busiest
  tier, i.e. the entry tier): a breach on a tier with enough samples counts even when another
  tier saw too few, while any check on a tier with too few samples is inconclusive. Nothing but
  passing checks on tiers with enough samples promotes.
* A ``BREACH`` increments ``failedChecks``; reaching ``failureThreshold`` is a :class:`Rollback`
  naming the breached SLO, its value and bound. Passing analyses do not reset the count: a canary
  that breaches intermittently still rolls back. The count resets when a new revision starts, on
  ``resume`` and on promotion.
* A passing analysis advances to the next step (:class:`Advance`) once the step's pause is over;
  a passing analysis at the last step promotes (:class:`Promote`: the canary becomes stable).
* No progress for ``progressDeadline`` (counted from the step's start, or the end of its timed
  pause; never during an indefinite pause) marks the :class:`Hold` as stalled: the reconciler sets
  ``Degraded=True`` (``ProgressDeadlineExceeded``). It does not roll back: the canary is not known
  to be bad, and the SRE decides (abort or promote).

Time to rollback
----------------
From the moment the canary starts breaching, an automatic rollback happens within

    failureThreshold x interval + query window   (+ one scrape interval)

The first breaching analysis comes at most one interval plus one window after the breach starts
(the window has to fill with enough bad data), every further one an interval later; the window is
the interval, so the bound is ``(failureThreshold + 1) x interval``. :func:`time_to_rollback`
computes it. Intervals that do not count (stale config, no data, errors) add to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..policy import CAPABLE_ONLY, Revision, RolloutSpec, RolloutStep, parse_duration
from . import conditions as cond
from .observations import Check, Observations
from .status import ActionRecord, Analysis, AnalysisResult, CheckResult, ManualAction, Phase, PolicyStatus

JITTER_FRACTION = 0.1
JITTER_MAX = timedelta(seconds=1)
"""An analysis up to JITTER_FRACTION of an interval, at most JITTER_MAX, early still counts as due."""

HoldReason = Literal[
    "StaleConfig", "ProviderError", "TooFewSamples", "NoData", "CheckFailed", "Paused", "AwaitingPromotion"
]
INCONCLUSIVE: frozenset[str] = frozenset({"StaleConfig", "ProviderError", "TooFewSamples", "NoData"})
_HOLD_REASON: dict[str, HoldReason] = {
    "StaleConfig": "StaleConfig",
    "ProviderError": "ProviderError",
    "TooFewSamples": "TooFewSamples",
    "NoData": "NoData",
}


@dataclass(frozen=True)
class Wait:
    """Nothing to do now. ``until``: when deciding again makes sense (None: only on a change)."""

    reason: Literal["NotRolling", "AnalysisNotDue", "AnalysisDue"]
    message: str
    until: datetime | None = None


@dataclass(frozen=True)
class Hold:
    """Stay at the current step and record the analysis.

    ``failed_check``: the analysis breached (failedChecks + 1) without reaching the threshold.
    ``stalled``: the progress deadline has passed (Degraded).
    """

    reason: HoldReason
    message: str
    analysis: Analysis
    failed_check: bool = False
    stalled: bool = False

    @property
    def inconclusive(self) -> bool:
        return self.reason in INCONCLUSIVE


@dataclass(frozen=True)
class Advance:
    """Move to step ``to_step`` at ``weight`` percent (``paused``: it has an indefinite pause)."""

    reason: Literal["AnalysisPassed", "ManualPromotion", "ManualResume"]
    message: str
    to_step: int
    weight: int
    paused: bool = False
    analysis: Analysis | None = None


@dataclass(frozen=True)
class Promote:
    """The canary ``revision`` becomes stable; canary weight 0."""

    reason: Literal["AnalysisPassed", "ManualPromotion"]
    message: str
    revision: str
    analysis: Analysis | None = None


@dataclass(frozen=True)
class Rollback:
    """Canary weight to 0, phase ``RolledBack``; ``breaches`` name the SLOs, values and bounds."""

    reason: Literal["FailureThresholdReached"]
    message: str
    failed_checks: int
    breaches: tuple[CheckResult, ...]
    analysis: Analysis


Decision = Wait | Hold | Advance | Promote | Rollback


# --- time helpers ------------------------------------------------------------------------------


def interval_of(spec: RolloutSpec) -> timedelta:
    return timedelta(seconds=parse_duration(spec.interval))


def time_to_rollback(spec: RolloutSpec) -> timedelta:
    """Upper bound from the start of a breach to canary weight 0 (scrape delay aside):
    ``failure_threshold x interval + window``, the window being one interval."""
    return interval_of(spec) * spec.failure_threshold + interval_of(spec)


def step_index(spec: RolloutSpec, status: PolicyStatus) -> int:
    """The current step, clamped to the spec's steps (they may have been shortened)."""
    return min(status.current_step, len(spec.steps) - 1)


def pause_end(step: RolloutStep, started: datetime) -> datetime | None:
    """When a timed pause ends; None without a pause or for an indefinite one."""
    if step.pause is None or step.pause == "indefinite":
        return None
    return started + timedelta(seconds=parse_duration(step.pause))


def analysis_due_at(spec: RolloutSpec, status: PolicyStatus) -> datetime | None:
    """When the next analysis is due (None when no rollout is in progress)."""
    if not status.rolling:
        return None
    start = status.step_started_at
    if start is None:
        return None  # a rolling status always has one; treat a missing one as "due now"
    last = status.last_analysis.time if status.last_analysis is not None else None
    base = max(start, last) if last is not None else start
    return base + interval_of(spec)


def needs_observations(spec: RolloutSpec, status: PolicyStatus, now: datetime) -> bool:
    """Whether :func:`decide` would use observations now (so the caller should query)."""
    if not status.rolling:
        return False
    due = analysis_due_at(spec, status)
    return due is None or now >= due - min(interval_of(spec) * JITTER_FRACTION, JITTER_MAX)


# --- decide ------------------------------------------------------------------------------------


def _check_result(c: Check) -> CheckResult:
    return CheckResult(
        slo=c.slo,
        objective=c.objective,
        tier=c.tier,
        revision=c.revision,
        verdict=c.verdict.value,
        value=c.value,
        bound=c.bound,
        stable_value=c.stable_value,
        message=c.message,
    )


def _describe(checks: tuple[Check, ...], limit: int = 3) -> str:
    parts = [c.describe() for c in checks[:limit]]
    if len(checks) > limit:
        parts.append(f"and {len(checks) - limit} more")
    return "; ".join(parts)


def _enough_samples(spec: RolloutSpec, obs: Observations, tier: str | None) -> bool:
    """Whether a check on ``tier`` saw at least ``minSamples`` canary requests. A revision-wide
    check (``tier=None``) is held to the busiest tier's count: the entry tier sees every request."""
    if spec.min_samples <= 0:
        return True
    n = obs.samples.get(tier, 0) if tier is not None else max(obs.samples.values(), default=0)
    return n >= spec.min_samples


def _classify(spec: RolloutSpec, obs: Observations) -> tuple[AnalysisResult, str, tuple[Check, ...]]:
    """The analysis result, its message and the breaches that count.

    Order: stale config, provider unreachable, breaches (counted even when another check's query
    failed), failed queries, too few samples, no data, pass. The sample gate applies per check,
    to the check's own tier: a breach on a tier with enough
    samples counts even when another tier saw too few (e.g. the last tier gets no traffic because
    the cheap tier wrongly accepts everything); a check on a tier with too few samples is
    inconclusive, whatever its verdict.
    """
    if not obs.config_current:
        return "StaleConfig", obs.config_message or "a proxy does not report the current config", ()
    if obs.provider_error is not None:
        return "ProviderError", f"metrics provider error: {obs.provider_error}", ()
    breaches = tuple(c for c in obs.breaches if _enough_samples(spec, obs, c.tier))
    if breaches:
        # a breach measured on real data counts even when another objective's query failed:
        # one broken custom query must not hold a bad canary forever
        note = f"; query errors: {_describe(obs.errors)}" if obs.errors else ""
        return "Breach", _describe(breaches) + note, breaches
    if obs.errors:
        return "ProviderError", f"metrics provider error: {_describe(obs.errors)}", ()
    if spec.min_samples > 0:
        if not obs.samples:
            return "TooFewSamples", "no canary sample counts observed", ()
        low_tiers = {t for t, n in obs.samples.items() if n < spec.min_samples}
        low_tiers |= {c.tier for c in obs.checks if c.tier is not None and c.tier not in obs.samples}
        if low_tiers:
            detail = ", ".join(f"{t}: {obs.samples.get(t, 0)}" for t in sorted(low_tiers))
            ignored = [c for c in obs.breaches if c.tier in low_tiers]
            note = f"; not counted: {_describe(tuple(ignored))}" if ignored else ""
            return (
                "TooFewSamples",
                f"fewer than {spec.min_samples} canary requests in the window ({detail}){note}",
                (),
            )
    if obs.no_data:
        return "NoData", f"no data: {_describe(obs.no_data)}", ()
    n = len(obs.checks)
    return "Pass", f"{n} check{'s' if n != 1 else ''} passed", ()


def _stalled(spec: RolloutSpec, status: PolicyStatus, step: RolloutStep, now: datetime) -> bool:
    if step.pause == "indefinite" or status.step_started_at is None:
        return False
    since = pause_end(step, status.step_started_at) or status.step_started_at
    return now - since > timedelta(seconds=parse_duration(spec.progress_deadline))


def decide(spec: RolloutSpec, status: PolicyStatus, obs: Observations | None, now: datetime) -> Decision:
    """What to do at ``now``. Pure: same inputs, same decision."""
    if not status.rolling:
        return Wait("NotRolling", f"phase {status.phase}: no rollout in progress")
    assert status.canary is not None
    due = analysis_due_at(spec, status)
    if due is not None and not needs_observations(spec, status, now):
        return Wait("AnalysisNotDue", f"next analysis at {due.isoformat()}", due)
    if obs is None:
        return Wait("AnalysisDue", "analysis is due: observe the canary and decide again", now)

    idx = step_index(spec, status)
    step = spec.steps[idx]
    result, detail, breaches = _classify(spec, obs)
    analysis = Analysis(
        time=now,
        result=result,
        counted=result in ("Pass", "Breach"),
        config_current=obs.config_current,
        samples=dict(obs.samples),
        checks=[_check_result(c) for c in obs.checks],
        message=detail,
    )
    at = f"step {idx + 1}/{len(spec.steps)} (weight {status.canary_weight}%)"

    if result == "Breach":
        failed = status.failed_checks + 1
        if failed >= spec.failure_threshold:
            return Rollback(
                "FailureThresholdReached",
                f"rolled back canary {status.canary.name} at {at}: {failed}/{spec.failure_threshold} "
                f"failed checks; breached: {detail}",
                failed,
                tuple(_check_result(c) for c in breaches),
                analysis,
            )
        return Hold(
            "CheckFailed",
            f"check failed ({failed}/{spec.failure_threshold}) at {at}: {detail}",
            analysis,
            failed_check=True,
            stalled=_stalled(spec, status, step, now),
        )
    if result != "Pass":
        reason = _HOLD_REASON[result]
        stalled = _stalled(spec, status, step, now)
        msg = f"holding at {at}: {detail}"
        if stalled:
            msg += f"; no progress for more than {spec.progress_deadline}"
        return Hold(reason, msg, analysis, stalled=stalled)

    # a passing, counted analysis
    if step.pause == "indefinite":
        return Hold("AwaitingPromotion", f"analysis passed at {at}; waiting for a manual promotion", analysis)
    end = pause_end(step, status.step_started_at or now)
    if end is not None and now < end:
        return Hold("Paused", f"analysis passed at {at}; paused until {end.isoformat()}", analysis)
    return _forward(spec, status, idx, "AnalysisPassed", f"analysis passed at {at}", analysis)


def _forward(
    spec: RolloutSpec,
    status: PolicyStatus,
    idx: int,
    reason: Literal["AnalysisPassed", "ManualPromotion", "ManualResume"],
    why: str,
    analysis: Analysis | None,
) -> Advance | Promote:
    assert status.canary is not None
    if idx >= len(spec.steps) - 1:
        promote_reason: Literal["AnalysisPassed", "ManualPromotion"] = (
            "AnalysisPassed" if reason == "AnalysisPassed" else "ManualPromotion"
        )
        return Promote(
            promote_reason, f"{why}: promoted {status.canary.name} to stable", status.canary.name, analysis
        )
    nxt = spec.steps[idx + 1]
    paused = nxt.pause == "indefinite"
    return Advance(
        reason,
        f"{why}: canary weight {status.canary_weight}% -> {nxt.weight}% (step {idx + 2}/{len(spec.steps)})",
        idx + 1,
        nxt.weight,
        paused,
        analysis,
    )


# --- applying decisions ------------------------------------------------------------------------


def _gen(status: PolicyStatus, generation: int | None) -> int | None:
    return generation if generation is not None else status.observed_generation


def next_status(
    status: PolicyStatus, decision: Decision, now: datetime, generation: int | None = None
) -> PolicyStatus:
    """Apply ``decision`` to ``status`` (pure). :class:`Wait` returns ``status`` unchanged.

    Whenever the canary weight or a revision changes, ``configHash`` is cleared: the reconciler
    renders the new proxy config and records its hash.
    """
    if isinstance(decision, Wait):
        return status
    gen = _gen(status, generation)
    conds = status.conditions
    if isinstance(decision, Hold):
        # Past the progress deadline, Progressing turns False with ProgressDeadlineExceeded, as a
        # Deployment's does: with Reconciling (its mirror) still True, kstatus would read the
        # object as in progress while Argo CD's check reads Degraded; now both read it as failed.
        # The analysis goes on: a passing interval advances and sets them back.
        progressing, degraded = (
            (
                (False, "ProgressDeadlineExceeded", decision.message),
                (True, "ProgressDeadlineExceeded", decision.message),
            )
            if decision.stalled
            else ((True, decision.reason, decision.message), (False, "Healthy", "no progress problem"))
        )
        conds = cond.set_conditions(
            conds,
            now,
            gen,
            Ready=(False, "RolloutInProgress", f"canary {status.canary_revision} at {status.canary_weight}%"),
            Progressing=progressing,
            Degraded=degraded,
        )
        return status.model_copy(
            update={
                "last_analysis": decision.analysis,
                "step_started_at": status.step_started_at or now,
                "failed_checks": status.failed_checks + (1 if decision.failed_check else 0),
                "conditions": conds,
                "message": decision.message,
                "observed_generation": gen,
            }
        )
    if isinstance(decision, Advance):
        phase: Phase = "Paused" if decision.paused else "Progressing"
        conds = cond.set_conditions(
            conds,
            now,
            gen,
            Ready=(False, "RolloutInProgress", f"canary {status.canary_revision} at {decision.weight}%"),
            Progressing=(True, "StepAdvanced", decision.message),
            Degraded=(False, "Healthy", "no progress problem"),
        )
        return status.model_copy(
            update={
                "phase": phase,
                "current_step": decision.to_step,
                "canary_weight": decision.weight,
                "step_started_at": now,
                "last_analysis": decision.analysis or status.last_analysis,
                "conditions": conds,
                "message": decision.message,
                "config_hash": None,
                "observed_generation": gen,
            }
        )
    if isinstance(decision, Promote):
        conds = cond.set_conditions(
            conds,
            now,
            gen,
            Ready=(True, "Promoted", f"revision {decision.revision} is stable"),
            Progressing=(False, "RolloutSucceeded", decision.message),
            Degraded=(False, "Healthy", "no progress problem"),
        )
        return status.model_copy(
            update={
                "phase": "Succeeded",
                "stable": status.canary,
                "stable_revision": decision.revision,
                "canary": None,
                "canary_revision": None,
                "canary_weight": 0,
                "failed_checks": 0,
                "step_started_at": now,
                "last_analysis": decision.analysis or status.last_analysis,
                "conditions": conds,
                "message": decision.message,
                "config_hash": None,
                "observed_generation": gen,
            }
        )
    # Rollback
    conds = cond.set_conditions(
        conds,
        now,
        gen,
        Ready=(False, "RolledBack", decision.message),
        Progressing=(False, "RolledBack", decision.message),
        Degraded=(True, "RolledBack", decision.message),
    )
    return status.model_copy(
        update={
            "phase": "RolledBack",
            "canary_weight": 0,
            "failed_checks": decision.failed_checks,
            "last_analysis": decision.analysis,
            "conditions": conds,
            "message": decision.message,
            "config_hash": None,
            "observed_generation": gen,
        }
    )


# --- starting a rollout ------------------------------------------------------------------------


def _enter_first_step(
    status: PolicyStatus,
    spec: RolloutSpec,
    now: datetime,
    gen: int | None,
    reason: str,
    message: str,
    update: dict[str, object],
) -> PolicyStatus:
    first = spec.steps[0]
    phase: Phase = "Paused" if first.pause == "indefinite" else "Progressing"
    conds = cond.set_conditions(
        status.conditions,
        now,
        gen,
        Ready=(False, "RolloutInProgress", message),
        Progressing=(True, reason, message),
        Degraded=(False, "Healthy", "no progress problem"),
    )
    base: dict[str, object] = {
        "phase": phase,
        "current_step": 0,
        "canary_weight": first.weight,
        "step_started_at": now,
        "rollout_started_at": now,
        "failed_checks": 0,
        "last_analysis": None,
        "conditions": conds,
        "message": message,
        "config_hash": None,
        "observed_generation": gen,
    }
    base.update(update)
    return status.model_copy(update=base)


def start_rollout(
    status: PolicyStatus,
    new_revision: Revision,
    now: datetime,
    spec: RolloutSpec,
    generation: int | None = None,
) -> PolicyStatus:
    """Start rolling out ``new_revision`` (the spec's cascade, ``Revision.of(spec.cascade())``).

    * The very first revision rolls out against the ``capable-only`` baseline (every request to
      the last tier), so even the first cascade is gated on quality. While the baseline is still
      stable it follows the newest revision's tiers.
    * A new revision while another is in flight replaces the canary and restarts at step 0.
    * The revision already in flight (or already stable) changes nothing: calling this on every
      spec change is safe (rollout-only spec changes keep the revision).
    * Going back to the stable revision drops the canary (phase ``Succeeded``).
    """
    gen = _gen(status, generation)
    name = new_revision.name
    if status.canary is not None and status.canary.name == name:
        return status if generation is None else status.model_copy(update={"observed_generation": gen})
    if status.stable is not None and status.stable.name == name:
        if status.canary is None and status.phase == "Succeeded":
            return status if generation is None else status.model_copy(update={"observed_generation": gen})
        msg = f"revision {name} is already stable" + (
            f"; dropped canary {status.canary.name}" if status.canary is not None else ""
        )
        conds = cond.set_conditions(
            status.conditions,
            now,
            gen,
            Ready=(True, "Promoted", f"revision {name} is stable"),
            Progressing=(False, "RolloutSucceeded", msg),
            Degraded=(False, "Healthy", "no progress problem"),
        )
        return status.model_copy(
            update={
                "phase": "Succeeded",
                "canary": None,
                "canary_revision": None,
                "canary_weight": 0,
                "failed_checks": 0,
                "conditions": conds,
                "message": msg,
                "config_hash": None,
                "observed_generation": gen,
            }
        )
    stable = status.stable
    if stable is None or stable.mode == CAPABLE_ONLY:
        stable = Revision.of(new_revision.cascade, mode="capable-only")
    replaced = (
        f" (replaces canary {status.canary.name})" if status.canary is not None and status.rolling else ""
    )
    msg = (
        f"rolling out revision {name} against {stable.name}{replaced}: canary weight {spec.steps[0].weight}%"
    )
    return _enter_first_step(
        status,
        spec,
        now,
        gen,
        "NewRevision",
        msg,
        {
            "stable": stable,
            "stable_revision": stable.name,
            "canary": new_revision,
            "canary_revision": name,
        },
    )


# --- manual actions ----------------------------------------------------------------------------


class ManualActionError(ValueError):
    """A manual action that does not apply to the policy's state; the message says why."""


@dataclass(frozen=True)
class ManualResult:
    status: PolicyStatus
    changed: bool
    reason: str
    message: str


def apply_manual(
    action: ManualAction,
    status: PolicyStatus,
    spec: RolloutSpec,
    now: datetime,
    *,
    full: bool = False,
    token: str | None = None,
    generation: int | None = None,
) -> ManualResult:
    """Apply an SRE's ``promote``, ``abort`` or ``resume`` (pure).

    ``promote``
        Rolling: advance to the next step, skipping the current pause and analysis (at the last
        step: promote). ``full=True`` promotes the canary to stable at once, also after a rollback
        or abort.
    ``abort``
        Rolling: canary weight 0, phase ``Aborted`` (the canary is kept). Idempotent on ``Aborted``.
    ``resume``
        ``Aborted``/``RolledBack``: retry the canary from step 0 with ``failedChecks`` reset.
        ``Paused`` (indefinite pause): continue to the next step, like ``promote``.

    Raises :class:`ManualActionError` when the action does not apply (e.g. nothing to promote).
    """
    gen = _gen(status, generation)
    record = ActionRecord(action=action, time=now, token=token)
    canary = status.canary

    def done(new: PolicyStatus, reason: str, message: str) -> ManualResult:
        return ManualResult(new.model_copy(update={"last_action": record}), True, reason, message)

    if action == "promote":
        if canary is None:
            raise ManualActionError(f"nothing to promote: phase {status.phase}, no canary revision")
        if full or not status.rolling:
            if not full:
                raise ManualActionError(
                    f"the rollout of {canary.name} is {status.phase}: use resume to retry it from the first "
                    f"step, or promote with --full to make {canary.name} stable now"
                )
            decision: Decision = Promote("ManualPromotion", f"manual promotion of {canary.name}", canary.name)
        else:
            decision = _forward(
                spec, status, step_index(spec, status), "ManualPromotion", "manual promotion", None
            )
        new = next_status(status, decision, now, gen)
        reason = "Promoted" if isinstance(decision, Promote) else "StepPromoted"
        return done(new, reason, decision.message)

    if action == "abort":
        if status.phase == "Aborted":
            return ManualResult(status, False, "AlreadyAborted", "the rollout is already aborted")
        if not status.rolling or canary is None:
            raise ManualActionError(f"no rollout in progress to abort (phase {status.phase})")
        msg = f"rollout of {canary.name} aborted at {status.canary_weight}%: canary weight 0"
        conds = cond.set_conditions(
            status.conditions,
            now,
            gen,
            Ready=(False, "Aborted", msg),
            Progressing=(False, "Aborted", msg),
            Degraded=(True, "Aborted", msg),
        )
        new = status.model_copy(
            update={
                "phase": "Aborted",
                "canary_weight": 0,
                "conditions": conds,
                "message": msg,
                "config_hash": None,
                "observed_generation": gen,
            }
        )
        return done(new, "Aborted", msg)

    if action == "resume":
        if status.phase in ("Aborted", "RolledBack") and canary is not None:
            msg = f"resumed the rollout of {canary.name} from step 1: canary weight {spec.steps[0].weight}%"
            new = _enter_first_step(status, spec, now, gen, "Resumed", msg, {})
            return done(new, "Resumed", msg)
        if status.phase == "Paused" and status.rolling:
            decision = _forward(spec, status, step_index(spec, status), "ManualResume", "resumed", None)
            return done(next_status(status, decision, now, gen), "Resumed", decision.message)
        raise ManualActionError(
            f"nothing to resume (phase {status.phase}); resume applies to Paused, Aborted and RolledBack"
        )

    raise ManualActionError(f"unknown action {action!r} (expected promote, abort or resume)")


# --- invalid specs -----------------------------------------------------------------------------


def mark_invalid(
    status: PolicyStatus, message: str, now: datetime, generation: int | None = None
) -> PolicyStatus:
    """The spec passed the schema but cannot work: phase ``Invalid``, ``Ready=False`` with
    ``message`` (what to fix). Weights and revisions stay as they are; the phase before is kept in
    ``previousPhase`` so :func:`clear_invalid` can restore it."""
    gen = _gen(status, generation)
    # Stalled (mirrored from Degraded), not Reconciling: kstatus (Flux, kubectl wait, cli-utils)
    # reads the object as Failed until the spec is fixed, not as in progress or healthy
    conds = cond.set_conditions(
        status.conditions,
        now,
        gen,
        Ready=(False, "InvalidSpec", message),
        Progressing=(False, "InvalidSpec", message),
        Degraded=(True, "InvalidSpec", message),
    )
    previous = status.previous_phase if status.phase == "Invalid" else status.phase
    return status.model_copy(
        update={
            "phase": "Invalid",
            "previous_phase": previous,
            "conditions": conds,
            "message": message,
            "observed_generation": gen,
        }
    )


def clear_invalid(status: PolicyStatus, now: datetime, generation: int | None = None) -> PolicyStatus:
    """The spec is usable again: restore the phase from before :func:`mark_invalid`."""
    if status.phase != "Invalid":
        return status
    gen = _gen(status, generation)
    phase: Phase = status.previous_phase or "Pending"
    msg = "the spec is valid again"
    stopped = phase in ("RolledBack", "Aborted")  # still needs a new revision or a resume
    conds = cond.set_conditions(
        status.conditions,
        now,
        gen,
        Ready=(phase == "Succeeded", "SpecValid", msg),
        Progressing=(phase not in ("Succeeded", "RolledBack", "Aborted"), "SpecValid", msg),
        Degraded=(stopped, phase if stopped else "Healthy", msg),
    )
    return status.model_copy(
        update={"phase": phase, "previous_phase": None, "conditions": conds, "observed_generation": gen}
    )
