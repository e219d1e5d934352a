"""`tierguard tune --apply` and `spec.autoTune`, the pure parts: the schedule, the plan written to
the cluster, the approval gate on a tuned revision's rollout, and the autoTune children."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tierguard.cli import main as cli_main
from tierguard.cron import cron_schedule
from tierguard.errors import PolicyError
from tierguard.kube import autotune
from tierguard.kube.validate import validate_policy
from tierguard.policy import CascadePolicySpec, Revision, RolloutSpec, parse_policy_spec
from tierguard.review.tune_apply import plan, rolling_reason, with_thresholds
from tierguard.rollout.approval import TUNED_ANNOTATION, ThresholdChange, TunedRecord, gated_rollout
from tierguard.rollout.decide import apply_manual, decide, start_rollout
from tierguard.rollout.status import PolicyStatus

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "tiers": [
        {"name": "small", "baseUrl": "http://small/v1", "model": "s", "confidence": {"threshold": 0.6}},
        {"name": "big", "baseUrl": "http://big/v1", "model": "b"},
    ],
    "proxy": {
        "image": "example/tierguard:2",
        "review": {"store": "postgresql://tune@db:5432/review"},
        "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        "secretMounts": [{"secretName": "keys", "mountPath": "/var/run/keys"}],
    },
    "autoTune": {"interval": "6h", "approval": "manual", "maxStep": 0.03, "badOutcomes": ["rating<=2"]},
}


def obj(spec: dict[str, Any] | None = None, phase: str = "Succeeded") -> dict[str, Any]:
    return {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1", "resourceVersion": "42"},
        "spec": json.loads(json.dumps(spec or SPEC)),
        "status": {"phase": phase, "canaryRevision": "abc" if phase in ("Progressing", "Paused") else None},
    }


def change(old: float, new: float, reason: str = "certified at shift +0.03") -> ThresholdChange:
    return ThresholdChange("small", old, new, 300, reason)


# --- the schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "seed", "expected"),
    [
        ("15m", 7, "7/15 * * * *"),
        ("30m", 95, "5/30 * * * *"),
        ("1h", 61, "1 0/1 * * *"),
        ("6h", 60 * 4 + 13, "13 4/6 * * *"),
        ("24h", 60 * 25 + 3, "3 1 * * *"),
        ("168h", 1440 * 3 + 60 * 2 + 9, "9 2 * * 3"),
    ],
)
def test_intervals_become_even_cron_schedules_spread_by_the_seed(
    interval: str, seed: int, expected: str
) -> None:
    assert cron_schedule(interval, seed) == expected


@pytest.mark.parametrize("interval", ["1m", "7m", "45m", "5h", "36h", "48h", "10s", "h"])
def test_intervals_cron_cannot_run_evenly_are_refused_with_the_ones_that_work(interval: str) -> None:
    with pytest.raises(ValueError, match=r"5m\.\.30m|bad interval"):
        cron_schedule(interval)


def test_a_bad_autotune_interval_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="dividing an hour"):
        parse_policy_spec({**SPEC, "autoTune": {"interval": "45m"}})
    with pytest.raises(PolicyError, match="approval"):
        parse_policy_spec({**SPEC, "autoTune": {"approval": "maybe"}})


def test_autotune_is_not_part_of_the_revision() -> None:
    """Turning autoTune on or changing it never starts a rollout."""
    a = parse_policy_spec(SPEC)
    b = parse_policy_spec({k: v for k, v in SPEC.items() if k != "autoTune"})
    assert Revision.of(a.cascade()).name == Revision.of(b.cascade()).name


# --- the plan --------------------------------------------------------------------------------------


def test_a_raised_threshold_is_one_conditional_patch_with_the_record() -> None:
    guarantee = {"method": "learn-then-test", "eps": 0.01, "delta": 0.1, "n": 2400}
    p = plan(obj(), [0.63, 0.5], [change(0.6, 0.63)], labels=300, approval="manual", now=NOW, rows=2400,
             guarantee=guarantee)  # fmt: skip
    assert p.patch is not None and p.record is not None
    assert p.patch["metadata"]["resourceVersion"] == "42"  # the precondition: no lost write
    tiers = p.patch["spec"]["tiers"]
    assert tiers[0]["confidence"]["threshold"] == 0.63 and tiers[1] == SPEC["tiers"][1]
    assert set(p.patch["spec"]) == {"tiers"}  # nothing else in the spec is touched
    record = TunedRecord.parse(p.patch["metadata"]["annotations"][TUNED_ANNOTATION])
    assert record == p.record
    assert record.labels == 300 and record.approval == "manual" and record.rows == 2400
    assert record.changes == [ThresholdChange("small", 0.6, 0.63, 300, "certified at shift +0.03")]
    assert json.loads(p.patch["metadata"]["annotations"]["tierguard.io/guarantee"]) == guarantee
    tuned = parse_policy_spec(with_thresholds(SPEC, [0.63, 0.5]))
    assert record.revision == Revision.of(tuned.cascade()).name
    assert record.previous == Revision.of(parse_policy_spec(SPEC).cascade()).name != record.revision
    assert "-      threshold: 0.6\n" in p.diff and "+      threshold: 0.63\n" in p.diff
    assert record.summary() == "tuned on 2400 production comparisons (300 review labels): small 0.6 -> 0.63"


def test_no_change_writes_nothing() -> None:
    p = plan(obj(), [0.6, 0.5], [change(0.6, 0.6, "kept")], labels=300, approval="auto", now=NOW)
    assert p.patch is None and "nothing applied" in p.reason


@pytest.mark.parametrize("phase", ["Progressing", "Paused"])
def test_a_rollout_in_progress_is_left_alone(phase: str) -> None:
    p = plan(obj(phase=phase), [0.7, 0.5], [change(0.6, 0.7)], labels=300, approval="auto", now=NOW)
    assert p.patch is None and f"phase {phase}" in p.reason and "abc" in p.reason
    for done in ("Succeeded", "RolledBack", "Aborted", "Pending"):
        assert rolling_reason({"phase": done}) is None


def test_a_spec_whose_tiers_do_not_match_is_an_error() -> None:
    with pytest.raises(PolicyError, match="does not match"):
        with_thresholds(SPEC, [0.7])


# --- the approval gate ----------------------------------------------------------------------------


def _record(revision: str, approval: str = "manual") -> TunedRecord:
    return TunedRecord(revision, "old", 300, approval, "2026-12-02T12:00:00Z")  # type: ignore[arg-type]


def test_unreadable_records_are_ignored() -> None:
    for raw in (None, "", "{", "[]", '{"revision": "r"}', '{"revision": "r", "approval": "maybe"}'):
        assert TunedRecord.parse(raw) is None
    rec = _record("r1")
    assert TunedRecord.parse(rec.to_annotation()) == rec


def test_only_the_tuned_revision_with_manual_approval_is_gated() -> None:
    rollout = RolloutSpec()
    gated = gated_rollout(rollout, _record("r1"), "r1")
    assert gated.steps[0].pause == "indefinite" and gated.steps[0].weight == 5
    assert gated.steps[1:] == rollout.steps[1:]
    assert gated_rollout(rollout, _record("r1", "auto"), "r1") == rollout
    assert gated_rollout(rollout, _record("r1"), "r2") == rollout  # someone changed the spec since
    assert gated_rollout(rollout, None, "r1") == rollout


def test_a_gated_rollout_waits_at_the_first_step_until_a_person_promotes() -> None:
    spec = CascadePolicySpec.model_validate(SPEC)
    stable = Revision.of(spec.cascade())
    tuned = CascadePolicySpec.model_validate(with_thresholds(SPEC, [0.65, 0.5]))
    revision = Revision.of(tuned.cascade())
    status = PolicyStatus(phase="Succeeded", stable=stable, stable_revision=stable.name)
    rollout = gated_rollout(tuned.rollout, _record(revision.name), revision.name)
    started = start_rollout(status, revision, NOW, rollout, 2)
    assert (started.phase, started.canary_revision, started.canary_weight) == ("Paused", revision.name, 5)
    # the same, reconciled again: nothing moves
    assert start_rollout(started, revision, NOW, rollout, 2) == started
    assert decide(rollout, started, None, NOW).__class__.__name__ == "Wait"
    approved = apply_manual("promote", started, rollout, NOW, generation=2)
    assert (approved.status.phase, approved.status.canary_weight, approved.status.current_step) == (
        "Progressing",
        10,
        1,
    )
    # without the gate the same revision would have started at once
    assert start_rollout(status, revision, NOW, tuned.rollout, 2).phase == "Progressing"


# --- autoTune's children ---------------------------------------------------------------------------


def test_autotune_renders_a_cronjob_and_a_role_limited_to_its_own_policy() -> None:
    spec = parse_policy_spec(SPEC)
    owner = obj()
    kids = {k["kind"]: k for k in autotune.children(owner, spec)}
    assert list(kids) == ["ServiceAccount", "Role", "RoleBinding", "CronJob"]
    for kid in kids.values():
        assert kid["metadata"]["name"] == "shop-tune" and kid["metadata"]["namespace"] == "prod"
        assert kid["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert kids["Role"]["rules"] == [
        {
            "apiGroups": ["tierguard.io"],
            "resources": ["cascadepolicies"],
            "resourceNames": ["shop"],
            "verbs": ["get", "patch"],
        }
    ]
    assert kids["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "shop-tune", "namespace": "prod"}
    ]
    cj = kids["CronJob"]["spec"]
    assert cj["schedule"] == autotune.schedule("prod", "shop", spec.auto_tune)  # type: ignore[arg-type]
    assert cj["schedule"].split()[1].endswith("/6") and cj["concurrencyPolicy"] == "Forbid"
    assert cj["suspend"] is False
    pod = cj["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shop-tune" and pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == "example/tierguard:2" and c["command"] == ["tierguard"]
    assert c["args"] == [
        "tune", "--apply", "--policy-ref", "prod/shop", "--store", "postgresql://tune@db:5432/review",
        "--max-step", "0.03", "--max-accuracy-drop", "0.01", "--delta", "0.1", "--approval", "manual",
        "--bad-outcome", "rating<=2",
    ]  # fmt: skip
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "password"}
    assert c["volumeMounts"][0]["mountPath"] == "/var/run/keys"
    assert pod["volumes"][0]["secret"]["secretName"] == "keys"
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # another policy runs at another minute (spread), the same policy always at the same one
    assert autotune.schedule("prod", "shop", spec.auto_tune) == cj["schedule"]  # type: ignore[arg-type]
    assert len({autotune.schedule("prod", f"p{i}", spec.auto_tune) for i in range(20)}) > 5  # type: ignore[arg-type]
    off = parse_policy_spec({k: v for k, v in SPEC.items() if k != "autoTune"})
    assert autotune.children(owner, off) == []


def test_autotune_needs_a_store_the_job_can_reach() -> None:
    def problem(spec: dict[str, Any], name: str = "shop") -> str | None:
        return validate_policy(name, spec, {}).problem

    assert problem(SPEC) is None
    sqlite = json.loads(json.dumps(SPEC))
    sqlite["proxy"]["review"]["store"] = "sqlite:review.db"
    assert "cannot open" in (problem(sqlite) or "")
    sqlite["autoTune"]["store"] = "postgresql://db/review"  # an explicit store wins
    assert problem(sqlite) is None
    none = json.loads(json.dumps(SPEC))
    del none["proxy"]["review"]
    assert "needs a review store" in (problem(none) or "")
    assert "at most 47" in (problem(SPEC, "x" * 48) or "")
    assert problem({k: v for k, v in SPEC.items() if k != "autoTune"}, "x" * 48) is None


# --- the command line --------------------------------------------------------------------------------


def test_cluster_options_without_a_cluster_are_clear_errors(tmp_path: Any, capsys: Any) -> None:
    store = f"sqlite:{tmp_path / 'r.db'}"
    assert cli_main(["tune", "--store", store, "--policy-ref", "prod/shop"]) == 2
    assert "--apply" in capsys.readouterr().err
    assert cli_main(["tune", "--store", store]) == 2
    assert "--policy FILE and --out FILE" in capsys.readouterr().err
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    assert (
        cli_main(["tune", "--store", store, "--policy-ref", "prod/shop", "--apply", "--kubeconfig", str(bad)])
        == 2
    )
    err = capsys.readouterr().err
    assert "Kubernetes credentials" in err and "Traceback" not in err


def test_without_autotune_a_left_cronjob_is_suspended_once_per_policy() -> None:
    from typing import cast

    from tierguard.kube.client import KubeApi, KubeError
    from tierguard.kube.handlers import Reconciler
    from tierguard.rollout.observations import Observations

    class Api:
        def __init__(self) -> None:
            self.patches: list[tuple[str, dict[str, Any]]] = []

        def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
            self.patches.append((path, patch))
            raise KubeError("PATCH", path, 404, "NotFound")

    api = Api()
    rec = Reconciler(cast(KubeApi, api), lambda **_: Observations(), service_monitors=False)
    owner = obj()
    rec._suspend_tune(owner)
    rec._suspend_tune(owner)  # remembered: no second call
    assert api.patches == [("/apis/batch/v1/namespaces/prod/cronjobs/shop-tune", {"spec": {"suspend": True}})]
    rec._record_applied(("prod", "shop"), "CronJob", "a rendered CronJob")  # autoTune was on since
    rec._suspend_tune(owner)
    assert len(api.patches) == 2
