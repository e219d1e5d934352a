"""Leader election's rules, pure: who writes the Lease, and what."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tierguard.kube.lease import Record, Timings, lease_action, lease_record, parse_lease

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def rec(holder: str = "a", duration: float = 15, transitions: int = 0) -> Record:
    return Record(holder, duration, "2026-01-02T03:04:00.000000Z", transitions, "42")


@pytest.mark.parametrize(
    ("record", "me", "unchanged_for", "action"),
    [
        (None, "a", 0, "create"),
        (rec("a"), "a", 100, "renew"),  # its own Lease: renew (even when late)
        (rec("a"), "b", 0, "wait"),
        (rec("a"), "b", 14.9, "wait"),
        (rec("a"), "b", 15, "acquire"),  # unchanged for a whole lease duration by b's clock
        (rec(""), "b", 0, "acquire"),  # released
        (rec("a", duration=1), "b", 1, "acquire"),
    ],
)
def test_lease_action(record: Record | None, me: str, unchanged_for: float, action: str) -> None:
    assert lease_action(record, me, unchanged_for) == action


def test_records_written() -> None:
    t = Timings(15, 10, 2)
    first = lease_record("a", NOW, t, None)
    assert first == {
        "holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-01-02T03:04:05.678901Z",
        "acquireTime": "2026-01-02T03:04:05.678901Z", "leaseTransitions": 0,
    }  # fmt: skip
    renewed = lease_record("a", NOW, t, rec("a", transitions=3))
    assert renewed["leaseTransitions"] == 3 and "acquireTime" not in renewed
    taken = lease_record("b", NOW, t, rec("a", transitions=3))
    assert taken["leaseTransitions"] == 4 and taken["holderIdentity"] == "b" and "acquireTime" in taken
    released = lease_record("a", NOW, t, rec("a"), release=True)
    assert released["holderIdentity"] is None and released["leaseDurationSeconds"] == 1


def test_parse_lease() -> None:
    obj = {
        "metadata": {"resourceVersion": "7"},
        "spec": {"holderIdentity": "x", "leaseDurationSeconds": 4, "renewTime": "r", "leaseTransitions": 2},
    }
    assert parse_lease(obj) == Record("x", 4.0, "r", 2, "7")
    assert parse_lease({"metadata": {}, "spec": {}}) == Record("", 0.0, "", 0, "")
    assert parse_lease(None) is None


@pytest.mark.parametrize("bad", [(4, 5, 1), (15, 10, 10), (15, 10, 0)])
def test_timings_must_leave_the_leader_time_to_stop(bad: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timings(*bad)
