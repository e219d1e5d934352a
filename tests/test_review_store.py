"""The review store against SQLite (a file in WAL mode) and a real PostgreSQL server (Debian's
package, started on loopback by the fixture), and the writer's bounded, non-blocking queue."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import pytest

import needs
from tierguard.review.store import (
    SCHEMA_VERSION,
    Event,
    Item,
    ShadowResult,
    StoreError,
    StratumRow,
    open_store,
)
from tierguard.review.writer import ReviewWriter


@pytest.fixture(scope="module")
def pg_server():
    needs.postgres()
    from infra.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'review.db'}"
    server = request.getfixturevalue("pg_server")
    return server.create_database("t" + uuid.uuid4().hex[:12])


def item(i, ts=None, tier="cheap", p=0.1, **kw):
    base = dict(
        id=f"chatcmpl-{i}", ts=time.time() if ts is None else ts, policy="pol", revision="r1", tier=tier,
        band="0-0.5", confidence=0.4, novelty=0.2, probability=p, prompt=f"q{i}", answer="B",
        cost_usd=0.001, counterfactual_usd=0.01, config_hash="h1",
    )
    base.update(kw)
    return Item(**base)


def test_items_labels_events_shadow_strata_and_retention(store_url):
    s = open_store(store_url)
    try:
        now = time.time()
        assert s.add_items([item(1), item(2, tier="capable"), item(3, ts=now - 86400 * 40)]) == 3
        assert s.add_items([item(1)]) == 0  # an id is stored once
        assert s.set_label("chatcmpl-1", "incorrect", "wrong option", "alice")
        assert s.set_label("chatcmpl-1", "correct", "on second look", "bob")  # a later label replaces
        assert not s.set_label("chatcmpl-none", "correct", "", "alice")
        with pytest.raises(ValueError):
            s.set_label("chatcmpl-1", "maybe", "", "alice")
        rows = {r.item.id: r for r in s.items()}
        assert rows["chatcmpl-1"].label == "correct" and rows["chatcmpl-1"].reviewer == "bob"
        assert rows["chatcmpl-2"].label is None
        assert [r.item.id for r in s.items(tier="capable")] == ["chatcmpl-2"]
        assert {r.item.id for r in s.items(unlabelled=True)} == {"chatcmpl-2", "chatcmpl-3"}

        ev = Event("chatcmpl-1", "refund", 12.5, now, now - 60, "pol", "r1", "cheap")
        assert s.add_event(ev)
        assert not s.add_event(ev)  # duplicate (response, event) rejected by the database
        assert s.add_event(Event("chatcmpl-1", "rating", 4, now, now - 60, "pol", "r1", "cheap"))
        assert [e.name for e in s.events()] == ["refund", "rating"]

        s.add_shadow([ShadowResult("chatcmpl-1", now, "pol", "r1", "cheap", False, 0.01)])
        assert s.shadow_results()[0].agree is False

        s.add_strata([StratumRow(10, "pol", "r1", "cheap", "0-0.5", 100, 3, 31.5, 100)])
        s.add_strata([StratumRow(10, "pol", "r1", "cheap", "0-0.5", 50, 1, 20.25, 50)])
        assert s.strata() == [StratumRow(10, "pol", "r1", "cheap", "0-0.5", 150, 4, 51.75, 150)]

        deleted = s.purge(now - 86400 * 30)
        assert deleted == 2  # the old item and the strata row of hour 10 (1970)
        assert {r.item.id for r in s.items()} == {"chatcmpl-1", "chatcmpl-2"}
        assert s.migrate() == SCHEMA_VERSION  # idempotent
    finally:
        s.close()


def test_duplicate_events_are_rejected_across_replicas(store_url):
    """Two stores (two proxy replicas) on one database, racing to record the same event."""
    a, b = open_store(store_url), open_store(store_url)
    try:
        results = []
        barrier = threading.Barrier(2)

        def post(store):
            barrier.wait()
            ev = Event("chatcmpl-x", "human_handoff", 1, time.time(), time.time(), "pol", "r1", "cheap")
            results.append(store.add_event(ev))

        threads = [threading.Thread(target=post, args=(st,)) for st in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True]
    finally:
        a.close()
        b.close()


def test_migrations_run_once_when_replicas_start_together(store_url):
    stores, errors = [], []

    def start():
        try:
            stores.append(open_store(store_url))
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(st.migrate() == SCHEMA_VERSION for st in stores)
    for st in stores:
        st.close()


def test_version_1_store_is_migrated_and_keeps_its_shadow_rows(store_url, monkeypatch):
    """A store written by the previous release (schema 1: shadow rows without confidence or
    inclusion probability) is migrated in place; its rows read back with those fields unknown."""
    import tierguard.review.store as store_mod

    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 1)
    old = open_store(store_url)
    assert old.migrate() == 1
    old._run(
        lambda cur: cur.execute(
            old._sql(
                "INSERT INTO shadow (response_id, ts, policy, revision, tier, agree, cost_usd) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            ("chatcmpl-old", 1.0, "pol", "r1", "cheap", 0, 0.01),
        )
    )
    old.close()
    monkeypatch.undo()
    s = open_store(store_url)
    try:
        assert s.migrate() == SCHEMA_VERSION >= 2
        s.add_shadow(
            [
                ShadowResult(
                    "chatcmpl-new",
                    2.0,
                    "pol",
                    "r2",
                    "cheap",
                    True,
                    0.0,
                    raw_confidence=0.93,
                    confidence=0.71,
                    probability=0.05,
                    source="escalation",
                    answered="capable",
                )
            ]
        )
        old_row, new_row = s.shadow_results(policy="pol")
        assert old_row == ShadowResult("chatcmpl-old", 1.0, "pol", "r1", "cheap", False, 0.01)
        assert old_row.probability is None and old_row.source == "shadow"
        assert new_row.agree is True and new_row.confidence == 0.71 and new_row.probability == 0.05
        assert (new_row.source, new_row.answered, new_row.raw_confidence) == ("escalation", "capable", 0.93)
        assert [r.response_id for r in s.shadow_results(revision="r2")] == ["chatcmpl-new"]
        assert s.shadow_results(policy="other") == []
    finally:
        s.close()


def test_a_newer_schema_is_refused(tmp_path):
    url = f"sqlite:{tmp_path / 'r.db'}"
    open_store(url).close()
    with sqlite3.connect(tmp_path / "r.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(StoreError, match="newer than this tierguard"):
        open_store(url)


def test_bad_store_urls():
    with pytest.raises(StoreError, match="use sqlite:PATH"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="needs a path"):
        open_store("sqlite:")
    with pytest.raises(StoreError, match="review store"):
        open_store("sqlite:/nonexistent-dir/x/review.db")


def test_sqlite_store_is_one_file_in_wal_mode(tmp_path):
    open_store(f"sqlite:{tmp_path / 'r.db'}").close()
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- the writer --------------------------------------------------------------------------------


def test_writer_stores_batches_and_counts_a_full_queue_as_dropped(tmp_path):
    url = f"sqlite:{tmp_path / 'r.db'}"
    gate = threading.Event()
    drops: list[tuple[str, int]] = []

    def slow_open():
        gate.wait(10)  # the store is "slow to come up": the queue fills meanwhile
        return open_store(url)

    w = ReviewWriter(slow_open, queue_size=5, on_drop=lambda r, n: drops.append((r, n)))
    t0 = time.perf_counter()
    accepted = [w.offer(item(i)) for i in range(20)]
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5  # offer never waits for the store
    gate.set()
    w.drain()
    w.close()
    # the thread may hold one record while the queue holds five
    assert 5 <= sum(accepted) <= 6
    assert sum(n for r, n in drops if r == "queue_full") == 20 - sum(accepted)
    s = open_store(url)
    assert len(s.items()) == sum(accepted)
    s.close()


def test_writer_counts_items_as_dropped_while_the_store_is_down(tmp_path):
    drops: list[tuple[str, int]] = []
    w = ReviewWriter(
        lambda: open_store("sqlite:/nonexistent-dir/x/review.db"),
        on_drop=lambda r, n: drops.append((r, n)),
        retry_s=60,
    )
    assert w.offer(item(1)) and w.offer(item(2))
    w.drain()
    w.close()
    assert sum(n for r, n in drops if r == "store_error") == 2


@pytest.mark.slow
def test_postgres_down_is_a_store_error_and_the_store_reconnects(pg_server):
    from infra.postgres import PostgresServer

    with PostgresServer() as other:
        url = other.create_database("down")
        s = open_store(url)
        assert s.add_items([item(1)]) == 1
        other.stop(keep=True)
        with pytest.raises(StoreError, match="unavailable"):
            s.add_items([item(2)])
        drops: list[tuple[str, int]] = []
        w = ReviewWriter(lambda: s, on_drop=lambda r, n: drops.append((r, n)))
        w.offer(item(3))
        w.drain()
        assert drops == [("store_error", 1)]
        other.restart()
        w.offer(item(4))
        w.drain()
        assert drops == [("store_error", 1)]  # the next write reconnected
        assert {r.item.id for r in s.items()} == {"chatcmpl-1", "chatcmpl-4"}
        w.close()


def test_schema_1_store_is_migrated_and_keeps_its_counts(tmp_path):
    """A store written before the confidence sums existed: migration 2 adds them as 0, so the
    page knows those hours lack them (and leaves the model-assisted estimate out)."""
    from tierguard.review.store import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for stmt in MIGRATIONS[0][1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO strata VALUES (5, 'pol', 'r1', 'cheap', '0-0.5', 7, 1)")
    conn.commit()
    conn.close()
    s = open_store(f"sqlite:{path}")
    try:
        assert s.migrate() == SCHEMA_VERSION == 3
        assert s.strata() == [StratumRow(5, "pol", "r1", "cheap", "0-0.5", 7, 1, 0.0, 0)]
    finally:
        s.close()
