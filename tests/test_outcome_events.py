"""Outcome events: checks (pure), and the endpoint on two 'replicas' sharing one review store
(SQLite, and a real PostgreSQL), so a duplicate is rejected across replicas."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from test_review_store import pg_server  # noqa: F401 - the PostgreSQL fixture
from tierguard.policy import OutcomeEventSpec, OutcomeSpec
from tierguard.proxy.ids import IdSigner, InvalidId
from tierguard.review.metrics import ReviewMetrics
from tierguard.review.outcome_endpoint import OutcomeEndpoint
from tierguard.review.outcome_events import (
    Accepted,
    BadBatch,
    IdRejected,
    Rejected,
    batch_items,
    check_event,
    reply,
)
from tierguard.review.store import open_store

NOW = 1_800_000_000.0
SPEC = OutcomeSpec(max_age="24h")
SIGNER = IdSigner(b"shared-key")


def verify(rid):
    try:
        return SIGNER.verify(rid)
    except InvalidId as err:
        raise IdRejected(err.reason) from None


def rid(age_s=60.0, tier="cheap"):
    return SIGNER.issue("rev1", tier, 7, now=NOW - age_s)


# --- checks ------------------------------------------------------------------------------------


def test_a_valid_event_joins_its_decision():
    r = check_event(0, {"id": rid(), "event": "refund", "value": 12.5, "ts": NOW - 30}, SPEC, verify, NOW)
    assert isinstance(r, Accepted)
    assert (r.revision, r.tier, r.name, r.value, r.ts, r.issued) == ("rev1", "cheap", "refund", 12.5, NOW - 30, NOW - 60)
    default = check_event(0, {"id": rid(), "event": "human_handoff"}, SPEC, verify, NOW)
    assert isinstance(default, Accepted) and default.value == 1.0 and default.ts == NOW


@pytest.mark.parametrize(
    "event, reason",
    [
        ("not an object", "malformed"),
        ({"id": "X", "event": "nps"}, "unknown_event"),
        ({"id": "X", "event": "rating", "value": 7}, "bad_value"),
        ({"id": "X", "event": "rating", "value": True}, "bad_value"),
        ({"id": "X", "event": "rating", "value": "4"}, "bad_value"),
        ({"id": "chatcmpl-nope", "event": "rating", "value": 4}, "malformed"),
        ({"id": IdSigner(b"forger").issue("rev1", "cheap", 1, now=NOW), "event": "thumbs", "value": 0}, "bad_signature"),
        ({"id": "AGED", "event": "thumbs", "value": 0}, "expired"),
        ({"id": "FRESH", "event": "thumbs", "value": 0, "ts": NOW + 3600}, "bad_ts"),
        ({"id": "FRESH", "event": "thumbs", "value": 0, "ts": NOW - 86400 * 3}, "bad_ts"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(event, reason):
    if isinstance(event, dict):
        event = {**event, "id": {"X": rid(), "AGED": rid(age_s=86400 * 2), "FRESH": rid()}.get(event["id"], event["id"])}
    r = check_event(3, event, SPEC, verify, NOW)
    assert isinstance(r, Rejected) and r.reason == reason and r.index == 3
    assert "events[3]" in r.message


def test_configured_events_and_ranges():
    spec = OutcomeSpec(events=[OutcomeEventSpec(name="churn", min=0, max=1)])
    assert isinstance(check_event(0, {"id": rid(), "event": "churn", "value": 1}, spec, verify, NOW), Accepted)
    assert check_event(0, {"id": rid(), "event": "refund"}, spec, verify, NOW).reason == "unknown_event"
    with pytest.raises(ValueError, match="unique"):
        OutcomeSpec(events=[OutcomeEventSpec(name="a"), OutcomeEventSpec(name="a")])


def test_batches_and_replies():
    assert batch_items({"id": "x", "event": "refund"}) == [{"id": "x", "event": "refund"}]
    assert len(batch_items({"events": [{}, {}]})) == 2
    for bad in ([], {"events": []}, {"events": {}}, {"events": [{}] * 1001}):
        with pytest.raises(BadBatch):
            batch_items(bad)
    ok = Accepted(0, "i", "refund", 1, NOW, NOW, "r", "t")
    dup = Rejected(1, "duplicate", "events[1]: dup")
    bad = Rejected(2, "bad_value", "events[2]: bad", "events[2].value")
    assert reply([ok])[0] == 200
    status, body = reply([ok, dup, bad])
    assert status == 207 and body["accepted"] == 1 and body["rejected"] == 2 and body["error"]["code"] == "mixed"
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected"]
    assert reply([dup])[0] == 409
    status, body = reply([bad])
    assert status == 400 and body["error"]["param"] == "events[2].value"


# --- the endpoint on two replicas sharing a store -------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def shared_store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'review.db'}"
    else:
        url = request.getfixturevalue("pg_server").create_database("o" + uuid.uuid4().hex[:12])
    stores = [open_store(url), open_store(url)]
    yield stores
    for s in stores:
        s.close()


def _replica(store, log):
    registry = CollectorRegistry()
    metrics = ReviewMetrics(registry)
    ep = OutcomeEndpoint(
        metrics, verify, lambda: SPEC, lambda: "pol", lambda: store, log.append, clock=lambda: NOW
    )
    app = web.Application()
    app.router.add_post("/v1/outcomes", ep.handle)
    return app, registry


def test_endpoint_accepts_batches_partially_and_rejects_duplicates_across_replicas(shared_store):
    async def scenario():
        log_a, log_b = [], []
        (app_a, reg_a), (app_b, reg_b) = _replica(shared_store[0], log_a), _replica(shared_store[1], log_b)
        async with TestClient(TestServer(app_a)) as a, TestClient(TestServer(app_b)) as b:
            first, second = rid(tier="cheap"), rid(tier="capable")
            r = await a.post("/v1/outcomes", json={"events": [
                {"id": first, "event": "rating", "value": 2},
                {"id": first, "event": "human_handoff"},
                {"id": second, "event": "rating", "value": 9},
                {"id": "chatcmpl-forged", "event": "rating", "value": 3},
            ]})
            assert r.status == 207
            body = await r.json()
            assert [x["status"] for x in body["results"]] == ["accepted", "accepted", "rejected", "rejected"]
            assert [x.get("reason") for x in body["results"]][2:] == ["bad_value", "malformed"]
            # the same event through the other replica: a duplicate, caught by the shared store
            r = await b.post("/v1/outcomes", json={"id": first, "event": "rating", "value": 5})
            assert r.status == 409
            body = await r.json()
            assert body["error"]["code"] == "duplicate" and body["accepted"] == 0
            r = await b.post("/v1/outcomes", json={"id": second, "event": "rating", "value": 5})
            assert r.status == 200
            r = await b.post("/v1/outcomes", data=b"{nope")
            assert r.status == 400 and (await r.json())["error"]["code"] == "malformed"
            r = await b.post("/v1/outcomes", json={"events": []})
            assert r.status == 400 and (await r.json())["error"]["param"] == "events"
        return log_a, log_b, generate_latest(reg_a).decode(), generate_latest(reg_b).decode()

    log_a, log_b, metrics_a, metrics_b = asyncio.run(scenario())
    events = shared_store[0].events()
    assert sorted((e.name, e.tier, e.value) for e in events) == [
        ("human_handoff", "cheap", 1.0), ("rating", "capable", 5.0), ("rating", "cheap", 2.0)]
    assert [e["name"] for e in log_a] == ["rating", "human_handoff"] and len(log_b) == 1
    assert 'tierguard_outcome_events_total{event="rating",policy="pol",revision="rev1",tier="cheap"} 1.0' in metrics_a
    assert 'tierguard_outcome_value_total{event="rating",policy="pol",revision="rev1",tier="cheap"} 2.0' in metrics_a
    assert 'tierguard_outcome_rejected_total{policy="pol",reason="duplicate"} 1.0' in metrics_b


def test_without_a_store_duplicates_are_caught_per_replica_and_a_down_store_is_503(tmp_path):
    async def scenario():
        log: list = []
        registry = CollectorRegistry()
        local = OutcomeEndpoint(ReviewMetrics(registry), verify, lambda: SPEC, lambda: "pol", lambda: None,
                                log.append, clock=lambda: NOW)
        store = open_store(f"sqlite:{tmp_path / 'r.db'}")
        store.close()
        (tmp_path / "r.db").unlink()
        (tmp_path / "r.db").mkdir()  # the store's file is now a directory: every write fails
        down = OutcomeEndpoint(ReviewMetrics(CollectorRegistry()), verify, lambda: SPEC, lambda: "pol",
                               lambda: store, log.append, clock=lambda: NOW)
        app = web.Application()
        app.router.add_post("/local", local.handle)
        app.router.add_post("/down", down.handle)
        async with TestClient(TestServer(app)) as c:
            one = rid()
            assert (await c.post("/local", json={"id": one, "event": "refund", "value": 3})).status == 200
            assert (await c.post("/local", json={"id": one, "event": "refund", "value": 3})).status == 409
            r = await c.post("/down", json={"id": rid(), "event": "refund", "value": 3})
            assert r.status == 503 and (await r.json())["error"]["type"] == "store_unavailable"
        return log

    assert len(asyncio.run(scenario())) == 1
