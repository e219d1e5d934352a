"""Table tests of the pure rollout decision: decide, next_status, start_rollout, apply_manual."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tierguard.kube import render
from tierguard.policy import (
    CAPABLE_ONLY,
    CascadePolicySpec,
    CascadeSpec,
    Revision,
    RolloutSpec,
    RolloutStep,
    Tier,
)
from tierguard.rollout import conditions as cond
from tierguard.rollout.decide import (
    Advance,
    Decision,
    Hold,
    ManualActionError,
    Promote,
    Rollback,
    Wait,
    analysis_due_at,
    apply_manual,
    clear_invalid,
    decide,
    mark_invalid,
    needs_observations,
    next_status,
    start_rollout,
    time_to_rollback,
)
from tierguard.rollout.observations import Check, Observations, Verdict
from tierguard.rollout.status import Analysis, PolicyStatus, parse_status

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def cascade(threshold: float = 0.5, tiers: int = 2) -> CascadeSpec:
    names = ["small", "medium", "large"][:tiers] if tiers <= 3 else [f"t{i}" for i in range(tiers)]
    return CascadeSpec(
        tiers=[
            Tier(name=n, base_url=f"http://{n}:8000/v1", model=n, confidence={"threshold": threshold})
            for n in names
        ]
    )


CANARY = Revision.of(cascade(0.6))
OTHER = Revision.of(cascade(0.7))
STABLE = Revision.of(cascade(0.5))
BASELINE = Revision.of(cascade(0.6), mode="capable-only")

DEFAULT = RolloutSpec(interval="1m", failure_threshold=2, min_samples=10, progress_deadline="10m")


def roll(**kw: Any) -> RolloutSpec:
    base = DEFAULT.model_dump()
    base.update(kw)
    return RolloutSpec.model_validate(base)


def steps(*spec: int | tuple[int, str]) -> list[RolloutStep]:
    return [
        RolloutStep(weight=s) if isinstance(s, int) else RolloutStep(weight=s[0], pause=s[1]) for s in spec
    ]


def status(
    step: int = 0,
    weight: int = 5,
    phase: str = "Progressing",
    failed: int = 0,
    started: datetime = T0,
    last: datetime | None = None,
    last_checks: list[dict[str, Any]] | None = None,
) -> PolicyStatus:
    la = (
        Analysis(time=last, result="Pass", counted=True, checks=last_checks or [])
        if last is not None
        else None
    )
    return PolicyStatus(
        phase=phase,
        stable=STABLE,
        stable_revision=STABLE.name,
        canary=CANARY,
        canary_revision=CANARY.name,
        canary_weight=weight,
        current_step=step,
        step_started_at=started,
        failed_checks=failed,
        last_analysis=la,
        config_hash="abc123",
    )


def chk(
    verdict: Verdict, value: float | None = 0.1, bound: float | None = 0.2, tier: str | None = "small"
) -> Check:
    return Check("quality", "errors", tier, CANARY.name, verdict, value, bound)


SAMPLES = {"small": 100, "large": 40}


def obs(*checks: Check, **kw: Any) -> Observations:
    kw.setdefault("samples", SAMPLES)
    return Observations(checks=checks, **kw)


PASS = obs(chk(Verdict.PASS), chk(Verdict.PASS, tier="large"))
BREACH = obs(chk(Verdict.BREACH, 0.5, 0.2), chk(Verdict.PASS, tier="large"))
NODATA = obs(chk(Verdict.NO_DATA, None, None), chk(Verdict.PASS, tier="large"))
ERROR = obs(chk(Verdict.ERROR, None, None), chk(Verdict.PASS, tier="large"))
DOWN = Observations(provider_error="connection refused")
STALE = obs(
    chk(Verdict.PASS), config_current=False, config_message="50% of the proxies report the current config"
)
FEW = obs(chk(Verdict.PASS), samples={"small": 9, "large": 40})
NO_SAMPLES = Observations(checks=(chk(Verdict.PASS),), samples={})
NO_CHECKS = obs()
BREACH_AND_NODATA = obs(chk(Verdict.BREACH, 0.5, 0.2), chk(Verdict.NO_DATA, None, None, tier="large"))
BREACH_AND_ERROR = obs(chk(Verdict.BREACH, 0.5, 0.2), chk(Verdict.ERROR, None, None, tier="large"))
BREACH_FEW = obs(chk(Verdict.BREACH, 0.5, 0.2), samples={"small": 3})
BREACH_STALE = obs(chk(Verdict.BREACH, 0.5, 0.2), config_current=False)
# the cheap tier wrongly accepts everything: it breaches, and the last tier gets (almost) nothing
STARVED = {"small": 100, "large": 0}
BREACH_LAST_STARVED = obs(chk(Verdict.BREACH, 0.5, 0.2), chk(Verdict.PASS, tier="large"), samples=STARVED)
BREACH_ON_STARVED_TIER = obs(
    chk(Verdict.PASS), chk(Verdict.BREACH, 0.5, 0.2, tier="large"), samples={"small": 100, "large": 3}
)
BREACH_BOTH_ONE_STARVED = obs(
    chk(Verdict.BREACH, 0.5, 0.2), chk(Verdict.BREACH, 0.9, 0.2, tier="large"), samples=STARVED
)
PASS_LAST_STARVED = obs(chk(Verdict.PASS), chk(Verdict.PASS, tier="large"), samples=STARVED)
WIDE_BREACH_LAST_STARVED = obs(chk(Verdict.BREACH, 0.5, 0.2, tier=None), samples=STARVED)
WIDE_BREACH_FEW = obs(chk(Verdict.BREACH, 0.5, 0.2, tier=None), samples={"small": 9, "large": 2})


@dataclass
class Case:
    id: str
    st: PolicyStatus
    ob: Observations | None
    now: datetime
    kind: type
    reason: str | None = None
    spec: RolloutSpec = DEFAULT
    expect: dict[str, Any] = field(default_factory=dict)


CASES = [
    # --- when analysis is due -----------------------------------------------------------------
    Case(
        "not-due-right-after-step-start",
        status(),
        PASS,
        T0 + 30 * timedelta(seconds=1),
        Wait,
        "AnalysisNotDue",
    ),
    Case("due-after-one-interval-without-obs", status(), None, T0 + MIN, Wait, "AnalysisDue"),
    Case(
        "jitter-tolerance-counts-as-due",
        status(),
        PASS,
        T0 + timedelta(seconds=59.5),
        Advance,
        "AnalysisPassed",
    ),
    Case("just-outside-jitter-not-due", status(), PASS, T0 + timedelta(seconds=58.9), Wait, "AnalysisNotDue"),
    Case(
        "not-due-one-interval-after-last-analysis",
        status(last=T0 + MIN),
        PASS,
        T0 + MIN + timedelta(seconds=30),
        Wait,
        "AnalysisNotDue",
    ),
    Case("due-after-last-analysis", status(last=T0 + MIN), PASS, T0 + 2 * MIN, Advance, "AnalysisPassed"),
    Case("succeeded-is-not-rolling", status(phase="Succeeded"), PASS, T0 + MIN, Wait, "NotRolling"),
    Case(
        "rolled-back-is-not-rolling",
        status(phase="RolledBack", weight=0),
        BREACH,
        T0 + MIN,
        Wait,
        "NotRolling",
    ),
    Case("aborted-is-not-rolling", status(phase="Aborted", weight=0), PASS, T0 + MIN, Wait, "NotRolling"),
    Case("pending-is-not-rolling", PolicyStatus(), PASS, T0 + MIN, Wait, "NotRolling"),
    Case("invalid-is-not-rolling", status(phase="Invalid"), PASS, T0 + MIN, Wait, "NotRolling"),
    # --- advancing and promoting -------------------------------------------------------------------
    Case("pass-advances-5-to-10", status(), PASS, T0 + MIN, Advance, "AnalysisPassed", expect={"weight": 10}),
    Case(
        "pass-advances-25-to-50",
        status(step=2, weight=25),
        PASS,
        T0 + MIN,
        Advance,
        "AnalysisPassed",
        expect={"weight": 50, "to_step": 3},
    ),
    Case(
        "pass-at-100-promotes",
        status(step=4, weight=100),
        PASS,
        T0 + MIN,
        Promote,
        "AnalysisPassed",
        expect={"revision": CANARY.name},
    ),
    Case(
        "pass-at-last-step-below-100-promotes",
        status(step=1, weight=50),
        PASS,
        T0 + MIN,
        Promote,
        spec=roll(steps=steps(10, 50)),
    ),
    Case(
        "step-index-beyond-shortened-steps-is-clamped",
        status(step=7, weight=50),
        PASS,
        T0 + MIN,
        Promote,
        spec=roll(steps=steps(10, 50)),
    ),
    Case("no-slos-passes-on-samples", status(), NO_CHECKS, T0 + MIN, Advance, "AnalysisPassed"),
    Case(
        "min-samples-zero-needs-no-counts",
        status(),
        Observations(checks=(chk(Verdict.PASS),)),
        T0 + MIN,
        Advance,
        spec=roll(min_samples=0),
    ),
    Case(
        "advance-into-indefinite-pause-is-paused",
        status(),
        PASS,
        T0 + MIN,
        Advance,
        spec=roll(steps=steps(5, (10, "indefinite"), 100)),
        expect={"paused": True, "weight": 10},
    ),
    # --- holds: inconclusive, never promote, never roll back --------------------------------------
    Case("no-data-holds", status(), NODATA, T0 + MIN, Hold, "NoData"),
    Case("no-data-at-100-never-promotes", status(step=4, weight=100), NODATA, T0 + MIN, Hold, "NoData"),
    Case("provider-error-check-holds", status(), ERROR, T0 + MIN, Hold, "ProviderError"),
    Case("provider-down-holds", status(), DOWN, T0 + MIN, Hold, "ProviderError"),
    Case(
        "provider-down-with-failures-never-rolls-back",
        status(failed=1),
        DOWN,
        T0 + MIN,
        Hold,
        "ProviderError",
    ),
    Case("too-few-samples-holds", status(), FEW, T0 + MIN, Hold, "TooFewSamples"),
    Case("no-sample-counts-holds", status(), NO_SAMPLES, T0 + MIN, Hold, "TooFewSamples"),
    Case("stale-config-holds", status(), STALE, T0 + MIN, Hold, "StaleConfig"),
    Case(
        "breach-on-stale-config-does-not-count", status(failed=1), BREACH_STALE, T0 + MIN, Hold, "StaleConfig"
    ),
    Case(
        "breach-with-too-few-samples-does-not-count",
        status(failed=1),
        BREACH_FEW,
        T0 + MIN,
        Hold,
        "TooFewSamples",
    ),
    Case(
        "breach-counts-although-another-query-failed",
        status(failed=1),
        BREACH_AND_ERROR,
        T0 + MIN,
        Rollback,
        "FailureThresholdReached",
    ),
    Case(
        "query-error-without-breach-holds",
        status(failed=1),
        obs(chk(Verdict.PASS), chk(Verdict.ERROR, None, None, tier="large")),
        T0 + MIN,
        Hold,
        "ProviderError",
    ),
    Case(
        "provider-down-holds",
        status(failed=1),
        DOWN,
        T0 + MIN,
        Hold,
        "ProviderError",
    ),
    # --- the sample gate applies per check, to the check's own tier -------------------------------
    Case(
        "breach-on-busy-tier-counts-while-last-tier-starves",
        status(),
        BREACH_LAST_STARVED,
        T0 + MIN,
        Hold,
        "CheckFailed",
        expect={"failed_check": True},
    ),
    Case(
        "second-breach-on-busy-tier-rolls-back-while-last-tier-starves",
        status(failed=1),
        BREACH_LAST_STARVED,
        T0 + MIN,
        Rollback,
        "FailureThresholdReached",
    ),
    Case(
        "breach-on-starved-tier-is-inconclusive",
        status(failed=1),
        BREACH_ON_STARVED_TIER,
        T0 + MIN,
        Hold,
        "TooFewSamples",
        expect={"failed_check": False},
    ),
    Case(
        "pass-with-a-starved-tier-never-advances",
        status(),
        PASS_LAST_STARVED,
        T0 + MIN,
        Hold,
        "TooFewSamples",
    ),
    Case(
        "pass-with-a-starved-tier-never-promotes",
        status(step=4, weight=100),
        PASS_LAST_STARVED,
        T0 + MIN,
        Hold,
        "TooFewSamples",
    ),
    Case(
        "revision-wide-breach-counts-on-the-entry-tier-samples",
        status(failed=1),
        WIDE_BREACH_LAST_STARVED,
        T0 + MIN,
        Rollback,
    ),
    Case(
        "revision-wide-breach-with-too-few-requests-is-inconclusive",
        status(failed=1),
        WIDE_BREACH_FEW,
        T0 + MIN,
        Hold,
        "TooFewSamples",
    ),
    Case(
        "breach-without-sample-counts-counts-when-min-samples-is-zero",
        status(failed=1),
        Observations(checks=(chk(Verdict.BREACH, 0.5, 0.2),)),
        T0 + MIN,
        Rollback,
        spec=roll(min_samples=0),
    ),
    Case(
        "breach-on-a-check-tier-without-a-sample-count-is-inconclusive",
        status(failed=1),
        obs(chk(Verdict.BREACH, 0.5, 0.2, tier="medium")),
        T0 + MIN,
        Hold,
        "TooFewSamples",
    ),
    # --- breaches --------------------------------------------------------------------------------
    Case(
        "first-breach-counts", status(), BREACH, T0 + MIN, Hold, "CheckFailed", expect={"failed_check": True}
    ),
    Case("second-breach-rolls-back", status(failed=1), BREACH, T0 + MIN, Rollback, "FailureThresholdReached"),
    Case("breach-beats-no-data", status(failed=1), BREACH_AND_NODATA, T0 + MIN, Rollback),
    Case(
        "threshold-one-rolls-back-at-once",
        status(),
        BREACH,
        T0 + MIN,
        Rollback,
        spec=roll(failure_threshold=1),
    ),
    Case(
        "threshold-three-second-breach-holds",
        status(failed=1),
        BREACH,
        T0 + MIN,
        Hold,
        "CheckFailed",
        spec=roll(failure_threshold=3),
    ),
    Case("breach-at-100-rolls-back", status(step=4, weight=100, failed=1), BREACH, T0 + MIN, Rollback),
    Case(
        "breach-during-indefinite-pause-rolls-back",
        status(step=1, weight=10, phase="Paused", failed=1),
        BREACH,
        T0 + MIN,
        Rollback,
        spec=roll(steps=steps(5, (10, "indefinite"), 100)),
    ),
    Case(
        "breach-during-timed-pause-counts",
        status(step=0, weight=5),
        BREACH,
        T0 + MIN,
        Hold,
        "CheckFailed",
        spec=roll(steps=steps((5, "10m"), 100)),
    ),
    # --- pauses ----------------------------------------------------------------------------------
    Case(
        "timed-pause-not-over-holds",
        status(),
        PASS,
        T0 + MIN,
        Hold,
        "Paused",
        spec=roll(steps=steps((5, "5m"), 100)),
    ),
    Case(
        "timed-pause-over-advances",
        status(last=T0 + 4 * MIN),
        PASS,
        T0 + 5 * MIN,
        Advance,
        spec=roll(steps=steps((5, "5m"), 100)),
    ),
    Case(
        "pause-shorter-than-interval-advances-at-first-analysis",
        status(),
        PASS,
        T0 + MIN,
        Advance,
        spec=roll(steps=steps((5, "30s"), 100)),
    ),
    Case(
        "indefinite-pause-waits-for-promote",
        status(step=1, weight=10, phase="Paused"),
        PASS,
        T0 + 60 * MIN,
        Hold,
        "AwaitingPromotion",
        spec=roll(steps=steps(5, (10, "indefinite"), 100)),
    ),
    Case(
        "indefinite-pause-at-last-step-waits-instead-of-promoting",
        status(step=1, weight=100, phase="Paused"),
        PASS,
        T0 + MIN,
        Hold,
        "AwaitingPromotion",
        spec=roll(steps=steps(5, (100, "indefinite"))),
    ),
    # --- progress deadline -----------------------------------------------------------------------
    Case(
        "no-data-past-deadline-is-stalled",
        status(last=T0 + 10 * MIN),
        NODATA,
        T0 + 11 * MIN,
        Hold,
        "NoData",
        expect={"stalled": True},
    ),
    Case(
        "no-data-before-deadline-not-stalled",
        status(last=T0 + 8 * MIN),
        NODATA,
        T0 + 9 * MIN,
        Hold,
        "NoData",
        expect={"stalled": False},
    ),
    Case(
        "deadline-counts-from-pause-end",
        status(last=T0 + 14 * MIN),
        NODATA,
        T0 + 15 * MIN,
        Hold,
        "NoData",
        spec=roll(steps=steps((5, "10m"), 100)),
        expect={"stalled": False},
    ),
    Case(
        "indefinite-pause-never-stalls",
        status(step=1, weight=10, phase="Paused", last=T0 + 100 * MIN),
        NODATA,
        T0 + 101 * MIN,
        Hold,
        "NoData",
        spec=roll(steps=steps(5, (10, "indefinite"), 100)),
        expect={"stalled": False},
    ),
    Case(
        "stalled-but-breach-still-counts",
        status(last=T0 + 20 * MIN),
        BREACH,
        T0 + 21 * MIN,
        Hold,
        "CheckFailed",
        expect={"stalled": True, "failed_check": True},
    ),
    Case("stalled-then-pass-advances", status(last=T0 + 20 * MIN), PASS, T0 + 21 * MIN, Advance),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide_table(case: Case) -> None:
    d = decide(case.spec, case.st, case.ob, case.now)
    assert isinstance(d, case.kind), d
    if case.reason is not None:
        assert d.reason == case.reason, d
    for k, v in case.expect.items():
        assert getattr(d, k) == v, (k, d)
    # pure: the same inputs give the same decision
    assert decide(case.spec, case.st, case.ob, case.now) == d


def test_rollback_names_breached_slo_value_and_bound() -> None:
    d = decide(DEFAULT, status(failed=1), BREACH, T0 + MIN)
    assert isinstance(d, Rollback)
    assert d.failed_checks == 2
    (b,) = d.breaches
    assert (b.slo, b.objective, b.tier, b.value, b.bound) == ("quality", "errors", "small", 0.5, 0.2)
    assert "quality/errors" in d.message and "0.5" in d.message and "bound 0.2" in d.message
    assert "2/2" in d.message


@pytest.mark.parametrize(
    ("ob", "reason"),
    [
        (NODATA, "NoData"),
        (ERROR, "ProviderError"),
        (DOWN, "ProviderError"),
        (FEW, "TooFewSamples"),
        (STALE, "StaleConfig"),
    ],
)
def test_inconclusive_hold_never_counts_failures(ob: Observations, reason: str) -> None:
    st = status(failed=1)
    for i in range(1, 20):
        d = decide(DEFAULT, st, ob, T0 + i * MIN)
        assert isinstance(d, Hold) and d.reason == reason and d.inconclusive
        st = next_status(st, d, T0 + i * MIN)
        assert st.failed_checks == 1
        assert st.canary_weight == 5
        assert st.phase == "Progressing"
        assert st.last_analysis is not None and not st.last_analysis.counted
        progressing = cond.get_condition(st.conditions, cond.PROGRESSING)
        assert progressing is not None
        if d.stalled:  # past the progress deadline: as a Deployment's, Progressing turns False
            assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
            assert cond.is_true(st.conditions, cond.STALLED) and not cond.is_true(
                st.conditions, cond.RECONCILING
            )
        else:
            assert (progressing.status, progressing.reason) == ("True", reason)
    assert d.stalled  # the loop ran past the deadline


def test_rollback_names_only_the_breaches_that_count() -> None:
    d = decide(DEFAULT, status(failed=1), BREACH_BOTH_ONE_STARVED, T0 + MIN)
    assert isinstance(d, Rollback)
    assert [(b.tier, b.value) for b in d.breaches] == [("small", 0.5)]
    assert "tier small" in d.message and "tier large" not in d.message


def test_an_ignored_breach_is_named_in_the_hold_message() -> None:
    d = decide(DEFAULT, status(), BREACH_ON_STARVED_TIER, T0 + MIN)
    assert isinstance(d, Hold) and d.reason == "TooFewSamples"
    assert "large: 3" in d.message and "not counted" in d.message and "tier large" in d.message
    assert d.analysis.samples == {"small": 100, "large": 3} and not d.analysis.counted


def test_hold_messages_say_why() -> None:
    assert "fewer than 10" in decide(DEFAULT, status(), FEW, T0 + MIN).message
    assert "small: 9" in decide(DEFAULT, status(), FEW, T0 + MIN).message
    assert "connection refused" in decide(DEFAULT, status(), DOWN, T0 + MIN).message
    assert "50% of the proxies" in decide(DEFAULT, status(), STALE, T0 + MIN).message
    assert "no data" in decide(DEFAULT, status(), NODATA, T0 + MIN).message


# --- walking a whole rollout ------------------------------------------------------------------


def run(
    spec: RolloutSpec, st: PolicyStatus, script: list[Observations], start: datetime, tick: timedelta
) -> tuple[PolicyStatus, list[Decision]]:
    """Tick every ``tick``; feed the next scripted observation whenever analysis is due."""
    decisions: list[Decision] = []
    now = start
    todo = list(script)
    while todo and st.rolling:
        now += tick
        ob = todo[0] if needs_observations(spec, st, now) else None
        d = decide(spec, st, ob, now)
        if ob is not None:
            todo.pop(0)
        if not isinstance(d, Wait):
            decisions.append(d)
        st = next_status(st, d, now)
        if st.config_hash is None:
            st = st.model_copy(update={"config_hash": "rendered"})  # what the reconciler does
    return st, decisions


def test_full_rollout_walks_5_10_25_50_100_and_promotes() -> None:
    st = start_rollout(PolicyStatus(), CANARY, T0, DEFAULT)
    st, ds = run(DEFAULT, st, [PASS] * 5, T0, timedelta(seconds=20))
    assert [type(d).__name__ for d in ds] == ["Advance"] * 4 + ["Promote"]
    assert [d.weight for d in ds if isinstance(d, Advance)] == [10, 25, 50, 100]
    assert st.phase == "Succeeded"
    assert st.stable == CANARY and st.stable_revision == CANARY.name
    assert st.canary is None and st.canary_revision is None and st.canary_weight == 0
    assert cond.is_true(st.conditions, cond.READY)
    assert not cond.is_true(st.conditions, cond.PROGRESSING)
    assert not cond.is_true(st.conditions, cond.DEGRADED)


def test_breaches_accumulate_across_passes_to_rollback() -> None:
    st = start_rollout(PolicyStatus(), CANARY, T0, DEFAULT)
    st, ds = run(DEFAULT, st, [PASS, BREACH, PASS, NODATA, BREACH, PASS], T0, timedelta(seconds=30))
    assert [type(d).__name__ for d in ds] == ["Advance", "Hold", "Advance", "Hold", "Rollback"]
    assert st.phase == "RolledBack"
    assert st.canary_weight == 0
    assert st.failed_checks == 2
    assert st.canary == CANARY  # kept for inspection
    assert st.stable_revision == CAPABLE_ONLY
    assert cond.is_true(st.conditions, cond.DEGRADED)
    assert cond.is_true(st.conditions, cond.STALLED)
    assert not cond.is_true(st.conditions, cond.READY)
    degraded = cond.get_condition(st.conditions, cond.DEGRADED)
    assert degraded is not None and degraded.reason == "RolledBack" and "quality/errors" in degraded.message


def test_time_to_rollback_is_threshold_intervals_plus_window() -> None:
    spec = roll(interval="10s", failure_threshold=3)
    assert time_to_rollback(spec) == timedelta(seconds=40)
    # breaching from the start: the 3rd analysis, 3 intervals after the step started, rolls back
    st = start_rollout(PolicyStatus(), CANARY, T0, spec)
    st, ds = run(spec, st, [BREACH] * 3, T0, timedelta(seconds=1))
    assert isinstance(ds[-1], Rollback)
    assert st.last_analysis is not None
    assert st.last_analysis.time - T0 <= time_to_rollback(spec)


def test_restart_idempotence_same_status_same_decision() -> None:
    st = status(failed=1)
    # a restarted operator reads the status back from its JSON form
    again = parse_status(st.to_dict())
    assert again == st
    for ob in (PASS, BREACH, NODATA, DOWN, None):
        assert decide(DEFAULT, again, ob, T0 + MIN) == decide(DEFAULT, st, ob, T0 + MIN)
    # after applying a decision, ticking again at the same moment changes nothing
    d = decide(DEFAULT, st, BREACH, T0 + MIN)
    after = next_status(st, d, T0 + MIN)
    assert isinstance(decide(DEFAULT, after, BREACH, T0 + MIN), Wait)
    assert next_status(after, decide(DEFAULT, after, BREACH, T0 + MIN), T0 + MIN) == after
    assert parse_status(after.to_dict()) == after


def test_parse_status_ignores_foreign_keys_and_reports_bad_ones() -> None:
    assert parse_status(None) == PolicyStatus()
    assert parse_status({"kopf": {"progress": {}}, "phase": "Succeeded"}).phase == "Succeeded"
    with pytest.raises(ValueError, match="canaryWeight"):
        parse_status({"canaryWeight": 400})


def test_analysis_due_at_and_needs_observations() -> None:
    st = status()
    assert analysis_due_at(DEFAULT, st) == T0 + MIN
    assert not needs_observations(DEFAULT, st, T0 + timedelta(seconds=10))
    assert needs_observations(DEFAULT, st, T0 + MIN)
    assert analysis_due_at(DEFAULT, status(last=T0 + 3 * MIN)) == T0 + 4 * MIN
    assert analysis_due_at(DEFAULT, status(phase="Succeeded")) is None
    assert not needs_observations(DEFAULT, status(phase="Aborted"), T0 + MIN)


# --- next_status -------------------------------------------------------------------------------


def test_next_status_advance_resets_step_clock_and_config_hash() -> None:
    st = status(failed=1)
    d = decide(DEFAULT, st, PASS, T0 + MIN)
    new = next_status(st, d, T0 + MIN, generation=4)
    assert (new.current_step, new.canary_weight, new.step_started_at) == (1, 10, T0 + MIN)
    assert new.config_hash is None
    assert new.failed_checks == 1  # passes do not reset the count
    assert new.observed_generation == 4
    progressing = cond.get_condition(new.conditions, cond.PROGRESSING)
    assert progressing is not None and progressing.reason == "StepAdvanced"
    assert progressing.observed_generation == 4


def test_next_status_wait_is_identity() -> None:
    st = status()
    assert next_status(st, Wait("AnalysisNotDue", "later"), T0) is st


def test_condition_transition_time_moves_only_on_status_change() -> None:
    st = status()
    h1 = next_status(st, decide(DEFAULT, st, NODATA, T0 + MIN), T0 + MIN)
    h2 = next_status(h1, decide(DEFAULT, h1, FEW, T0 + 2 * MIN), T0 + 2 * MIN)
    c1 = cond.get_condition(h1.conditions, cond.PROGRESSING)
    c2 = cond.get_condition(h2.conditions, cond.PROGRESSING)
    assert c1 is not None and c2 is not None
    assert c2.reason == "TooFewSamples" and c2.last_transition_time == c1.last_transition_time
    rb = next_status(h2, Rollback("FailureThresholdReached", "x", 2, (), h2.last_analysis), T0 + 3 * MIN)  # type: ignore[arg-type]
    c3 = cond.get_condition(rb.conditions, cond.PROGRESSING)
    assert c3 is not None and c3.status == "False" and c3.last_transition_time == T0 + 3 * MIN


# --- start_rollout -----------------------------------------------------------------------------


def test_first_revision_rolls_out_against_capable_only() -> None:
    st = start_rollout(PolicyStatus(), CANARY, T0, DEFAULT, generation=1)
    assert st.phase == "Progressing"
    assert st.stable is not None and st.stable.mode == "capable-only" and st.stable.name == CAPABLE_ONLY
    assert st.stable.cascade == CANARY.cascade
    assert st.canary == CANARY and st.canary_revision == CANARY.name
    assert (st.current_step, st.canary_weight, st.step_started_at, st.failed_checks) == (0, 5, T0, 0)
    assert st.observed_generation == 1
    assert (st.stable.mode, st.canary, st.canary_weight) == ("capable-only", CANARY, 5)
    cfg = render.proxy_config("p", "ns", CascadePolicySpec.model_validate(CANARY.cascade.to_yaml_dict()), st)
    assert (
        cfg is not None
        and cfg.stable.mode == "capable-only"
        and cfg.canary == CANARY
        and cfg.canary_weight == 5
    )


def test_new_revision_mid_rollout_replaces_canary_at_step_zero() -> None:
    st = status(step=3, weight=50, failed=1, last=T0 + 5 * MIN)
    new = start_rollout(st, OTHER, T0 + 6 * MIN, DEFAULT)
    assert new.canary == OTHER and new.canary_revision == OTHER.name
    assert new.stable == STABLE
    assert (new.current_step, new.canary_weight, new.failed_checks) == (0, 5, 0)
    assert new.step_started_at == T0 + 6 * MIN and new.last_analysis is None
    assert "replaces canary" in (new.message or "")


def test_new_revision_while_baseline_still_stable_refreshes_baseline() -> None:
    st = start_rollout(PolicyStatus(), CANARY, T0, DEFAULT)
    new = start_rollout(st, OTHER, T0 + MIN, DEFAULT)
    assert new.stable is not None and new.stable.mode == "capable-only"
    assert new.stable.cascade == OTHER.cascade


def test_same_revision_is_a_no_op() -> None:
    st = status(step=2, weight=25)
    assert start_rollout(st, CANARY, T0 + 9 * MIN, DEFAULT) is st
    done = PolicyStatus(phase="Succeeded", stable=STABLE, stable_revision=STABLE.name)
    assert start_rollout(done, STABLE, T0, DEFAULT) is done
    rolled = status(phase="RolledBack", weight=0, failed=2)
    assert start_rollout(rolled, CANARY, T0, DEFAULT) is rolled  # needs resume, not a re-apply


def test_reverting_to_stable_drops_the_canary() -> None:
    new = start_rollout(status(step=2, weight=25), STABLE, T0 + MIN, DEFAULT)
    assert new.phase == "Succeeded" and new.canary is None and new.canary_weight == 0
    assert cond.is_true(new.conditions, cond.READY)


def test_new_revision_after_rollback_starts_again() -> None:
    new = start_rollout(status(phase="RolledBack", weight=0, failed=2), OTHER, T0, DEFAULT)
    assert new.phase == "Progressing" and new.canary == OTHER and new.failed_checks == 0
    assert not cond.is_true(new.conditions, cond.DEGRADED)


def test_first_step_with_indefinite_pause_starts_paused() -> None:
    spec = roll(steps=steps((5, "indefinite"), 100))
    assert start_rollout(PolicyStatus(), CANARY, T0, spec).phase == "Paused"


# --- manual actions ----------------------------------------------------------------------------

PAUSE_SPEC = roll(steps=steps(5, (10, "indefinite"), 100))


def test_promote_at_indefinite_pause_advances() -> None:
    st = status(step=1, weight=10, phase="Paused")
    r = apply_manual("promote", st, PAUSE_SPEC, T0 + MIN, token="t1")
    assert r.changed and r.reason == "StepPromoted"
    assert (r.status.phase, r.status.current_step, r.status.canary_weight) == ("Progressing", 2, 100)
    assert r.status.last_action is not None and r.status.last_action.token == "t1"


def test_promote_at_last_step_promotes() -> None:
    r = apply_manual("promote", status(step=4, weight=100), DEFAULT, T0)
    assert r.reason == "Promoted" and r.status.phase == "Succeeded" and r.status.stable == CANARY


def test_promote_full_promotes_at_once_even_after_rollback() -> None:
    for st in (status(), status(phase="RolledBack", weight=0), status(phase="Aborted", weight=0)):
        r = apply_manual("promote", st, DEFAULT, T0, full=True)
        assert r.status.phase == "Succeeded" and r.status.stable == CANARY and r.status.canary is None


def test_promote_without_full_after_rollback_explains() -> None:
    with pytest.raises(ManualActionError, match="resume"):
        apply_manual("promote", status(phase="RolledBack", weight=0), DEFAULT, T0)
    with pytest.raises(ManualActionError, match="nothing to promote"):
        apply_manual("promote", PolicyStatus(phase="Succeeded", stable=STABLE), DEFAULT, T0)


def test_abort_sets_weight_zero_and_is_idempotent() -> None:
    r = apply_manual("abort", status(step=2, weight=25), DEFAULT, T0)
    assert (r.status.phase, r.status.canary_weight, r.status.config_hash) == ("Aborted", 0, None)
    assert r.status.canary == CANARY
    assert cond.is_true(r.status.conditions, cond.DEGRADED)
    again = apply_manual("abort", r.status, DEFAULT, T0 + MIN)
    assert not again.changed and again.status is r.status
    assert isinstance(decide(DEFAULT, r.status, PASS, T0 + 5 * MIN), Wait)
    with pytest.raises(ManualActionError, match="no rollout in progress"):
        apply_manual("abort", PolicyStatus(phase="Succeeded", stable=STABLE), DEFAULT, T0)


def test_resume_after_abort_restarts_from_step_zero() -> None:
    aborted = apply_manual("abort", status(step=3, weight=50, failed=1), DEFAULT, T0).status
    r = apply_manual("resume", aborted, DEFAULT, T0 + MIN)
    assert (r.status.phase, r.status.current_step, r.status.canary_weight, r.status.failed_checks) == (
        "Progressing",
        0,
        5,
        0,
    )
    assert r.status.step_started_at == T0 + MIN
    assert not cond.is_true(r.status.conditions, cond.DEGRADED)


def test_resume_after_rollback_and_when_paused() -> None:
    r = apply_manual("resume", status(phase="RolledBack", weight=0, failed=2), DEFAULT, T0)
    assert r.status.phase == "Progressing" and r.status.failed_checks == 0
    r = apply_manual("resume", status(step=1, weight=10, phase="Paused"), PAUSE_SPEC, T0)
    assert r.status.current_step == 2 and r.status.phase == "Progressing"
    with pytest.raises(ManualActionError, match="nothing to resume"):
        apply_manual("resume", status(), DEFAULT, T0)


def test_invalid_and_back() -> None:
    st = status(step=2, weight=25)
    bad = mark_invalid(st, "spec.slos: QualitySLO 'x' not found", T0 + MIN, generation=3)
    assert bad.phase == "Invalid" and bad.canary_weight == 25 and bad.observed_generation == 3
    ready = cond.get_condition(bad.conditions, cond.READY)
    assert ready is not None and ready.status == "False" and ready.reason == "InvalidSpec"
    assert isinstance(decide(DEFAULT, bad, PASS, T0 + 5 * MIN), Wait)
    again = mark_invalid(bad, "still bad", T0 + 2 * MIN)
    assert again.previous_phase == "Progressing"
    good = clear_invalid(again, T0 + 3 * MIN, generation=4)
    assert good.phase == "Progressing" and good.previous_phase is None
    assert clear_invalid(good, T0) is good


def _kstatus_view(conditions: list[cond.Condition]) -> dict[str, str]:
    return {c.type: c.status for c in conditions if c.type in (cond.READY, cond.RECONCILING, cond.STALLED)}


@pytest.mark.parametrize(
    ("before", "restored"),
    [
        ("Progressing", {"Ready": "False", "Reconciling": "True", "Stalled": "False"}),
        ("Succeeded", {"Ready": "True", "Reconciling": "False", "Stalled": "False"}),
        ("RolledBack", {"Ready": "False", "Reconciling": "False", "Stalled": "True"}),
        ("Aborted", {"Ready": "False", "Reconciling": "False", "Stalled": "True"}),
    ],
)
def test_invalid_is_stalled_and_clearing_restores_the_phases_conditions(
    before: str, restored: dict[str, str]
) -> None:
    st = status(step=2, weight=25).model_copy(update={"phase": before})
    bad = mark_invalid(st, "spec.slos: QualitySLO 'x' not found", T0 + MIN, generation=3)
    # kstatus: Stalled=True and no Reconciling=True -> Failed (not in progress, not current)
    assert _kstatus_view(bad.conditions) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    stalled = cond.get_condition(bad.conditions, cond.STALLED)
    assert stalled is not None and stalled.reason == "InvalidSpec" and stalled.observed_generation == 3
    good = clear_invalid(bad, T0 + 2 * MIN, generation=4)
    assert good.phase == before
    assert _kstatus_view(good.conditions) == restored
    assert all(c.observed_generation == 4 for c in good.conditions)


def test_missing_step_start_is_due_at_once_and_gets_repaired() -> None:
    st = status().model_copy(update={"step_started_at": None})
    assert needs_observations(DEFAULT, st, T0)
    d = decide(DEFAULT, st, NODATA, T0)
    assert isinstance(d, Hold)
    assert next_status(st, d, T0).step_started_at == T0
    assert isinstance(decide(DEFAULT, st, PASS, T0), Advance)


# --- invariants over random runs ---------------------------------------------------------------


def test_invariants_over_random_runs() -> None:
    """Seeded random walks through decide/next_status/apply_manual; after every tick the status is
    consistent and every transition respects the rules."""
    import random

    rng = random.Random(20260301)
    pool = [PASS, PASS, PASS, BREACH, NODATA, ERROR, DOWN, STALE, FEW, BREACH_AND_NODATA, None]
    for _run in range(300):
        weights = sorted(rng.sample(range(1, 101), rng.randint(1, 6)))
        if rng.random() < 0.5 and weights[-1] != 100:
            weights.append(100)
        step_list = [
            RolloutStep(weight=w, pause=rng.choice([None, None, "30s", "3m", "indefinite"])) for w in weights
        ]
        spec = roll(steps=step_list, failure_threshold=rng.randint(1, 3), progress_deadline="5m")
        st = start_rollout(PolicyStatus(), CANARY, T0, spec)
        now = T0
        for _tick in range(40):
            now += timedelta(seconds=rng.choice([10, 30, 60, 61]))
            before = st
            if rng.random() < 0.05:
                action = rng.choice(["promote", "abort", "resume"])
                try:
                    st = apply_manual(action, st, spec, now, full=rng.random() < 0.2).status  # type: ignore[arg-type]
                except ManualActionError:
                    assert st == before
                continue
            ob = rng.choice(pool)
            d = decide(spec, st, ob, now)
            assert decide(spec, parse_status(st.to_dict()), ob, now) == d
            st = next_status(st, d, now)
            if st.config_hash is None:
                st = st.model_copy(update={"config_hash": "rendered"})
            # transitions
            if isinstance(d, Hold) and d.inconclusive:
                assert (st.canary_weight, st.current_step, st.failed_checks) == (
                    before.canary_weight,
                    before.current_step,
                    before.failed_checks,
                )
            if isinstance(d, Promote):
                assert d.analysis is not None and d.analysis.result == "Pass"
                assert before.current_step >= len(spec.steps) - 1
            if isinstance(d, Advance):
                assert d.analysis is not None and d.analysis.result == "Pass"
                assert before.step_started_at is not None
                end = before.step_started_at + timedelta(
                    seconds={None: 0, "30s": 30, "3m": 180}.get(spec.steps[before.current_step].pause, 0)
                )
                assert spec.steps[before.current_step].pause != "indefinite" and now >= end
            if isinstance(d, Rollback):
                assert d.analysis.result == "Breach" and st.failed_checks == spec.failure_threshold
            # states
            assert st.failed_checks <= spec.failure_threshold
            if st.rolling:
                assert st.canary_weight == spec.steps[st.current_step].weight
                assert st.phase == (
                    "Paused" if spec.steps[st.current_step].pause == "indefinite" else "Progressing"
                )
            if st.phase == "Succeeded":
                assert st.canary is None and st.canary_weight == 0 and st.stable == CANARY
                assert cond.is_true(st.conditions, cond.READY)
            if st.phase in ("RolledBack", "Aborted"):
                assert st.canary_weight == 0 and st.canary == CANARY
                assert cond.is_true(st.conditions, cond.DEGRADED)
            if st.phase != "Succeeded":
                assert not cond.is_true(st.conditions, cond.READY)
            assert parse_status(st.to_dict()) == st
