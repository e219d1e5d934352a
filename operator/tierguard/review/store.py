"""The review store: sampled items, labels, outcome events, shadow results and hourly stratum counts.

Two back ends with one schema and one set of migrations:

- ``sqlite:PATH``: embedded, one file in WAL mode (readers never block the writer); for one proxy
  replica, or the reviewer's page next to it.
- ``postgresql://...``: several proxy replicas write to one server. Migrations take a transaction-level
  advisory lock, so replicas starting together apply each migration once.

Outcome events have a primary key of (response id, event name): a second event of the same name
for the same response is rejected by the database, so a duplicate is caught across replicas.
Every method is safe to call from several threads (one connection per store, behind a lock; a
PostgreSQL connection that broke is reopened on the next call).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LABELS = ("correct", "incorrect", "skip")

# (version, statements). Placeholder types: {real}, {text}; both back ends read them.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE items (
                id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, policy TEXT NOT NULL,
                revision TEXT NOT NULL, tier TEXT NOT NULL, band TEXT NOT NULL,
                confidence DOUBLE PRECISION, novelty DOUBLE PRECISION,
                probability DOUBLE PRECISION NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL, counterfactual_usd DOUBLE PRECISION NOT NULL,
                config_hash TEXT NOT NULL)""",
            "CREATE INDEX items_stratum ON items (policy, revision, tier, band, ts)",
            """CREATE TABLE labels (
                item_id TEXT PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
                label TEXT NOT NULL, note TEXT NOT NULL, reviewer TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL)""",
            """CREATE TABLE events (
                response_id TEXT NOT NULL, name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
                ts DOUBLE PRECISION NOT NULL, issued DOUBLE PRECISION NOT NULL, policy TEXT NOT NULL,
                revision TEXT NOT NULL, tier TEXT NOT NULL, PRIMARY KEY (response_id, name))""",
            "CREATE INDEX events_ts ON events (ts)",
            """CREATE TABLE shadow (
                response_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, policy TEXT NOT NULL,
                revision TEXT NOT NULL, tier TEXT NOT NULL, agree INTEGER NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX shadow_ts ON shadow (ts)",
            """CREATE TABLE strata (
                hour BIGINT NOT NULL, policy TEXT NOT NULL, revision TEXT NOT NULL, tier TEXT NOT NULL,
                band TEXT NOT NULL, seen BIGINT NOT NULL, sampled BIGINT NOT NULL,
                PRIMARY KEY (hour, policy, revision, tier, band))""",
        ],
    ),
    (
        # shadow rows become comparisons of a cheaper tier's answer with the capable tier's, from a
        # shadow call or free from an escalated request, with what tune needs (docs/review.md)
        2,
        [
            "ALTER TABLE shadow ADD COLUMN raw_confidence DOUBLE PRECISION",
            "ALTER TABLE shadow ADD COLUMN confidence DOUBLE PRECISION",
            "ALTER TABLE shadow ADD COLUMN probability DOUBLE PRECISION",
            "ALTER TABLE shadow ADD COLUMN source TEXT NOT NULL DEFAULT 'shadow'",
            "ALTER TABLE shadow ADD COLUMN answered TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX shadow_policy ON shadow (policy, revision, ts)",
        ],
    ),
]
MIGRATIONS.append(
    (
        3,
        [  # every answer's calibrated confidence summed per stratum and hour: the difference estimate
            "ALTER TABLE strata ADD COLUMN confidence_sum DOUBLE PRECISION NOT NULL DEFAULT 0",
            "ALTER TABLE strata ADD COLUMN confidence_n BIGINT NOT NULL DEFAULT 0",
        ],
    )
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class StoreError(Exception):
    """The store cannot be reached or used; the message says why."""


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    ts: float
    policy: str
    revision: str
    tier: str
    band: str
    confidence: float | None
    novelty: float | None
    probability: float
    prompt: str
    answer: str
    cost_usd: float
    counterfactual_usd: float
    config_hash: str


@dataclass(frozen=True, slots=True)
class Event:
    response_id: str
    name: str
    value: float
    ts: float
    issued: float
    policy: str
    revision: str
    tier: str


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """A cheaper tier's answer to one request compared with the capable tier's answer.

    ``source`` is ``shadow`` (the capable tier re-asked after the fact, ``cost_usd`` paid for it)
    or ``escalation`` (the request escalated to the capable tier, so both answers exist at no
    extra cost). ``probability`` is the request's inclusion probability: the shadow rate, or the
    rate escalated requests are recorded at (None on rows written before schema version 2).
    ``answered`` is the tier whose answer the client received."""

    response_id: str
    ts: float
    policy: str
    revision: str
    tier: str
    agree: bool
    cost_usd: float
    raw_confidence: float | None = None
    confidence: float | None = None
    probability: float | None = None
    source: str = "shadow"
    answered: str = ""


@dataclass(frozen=True, slots=True)
class StratumRow:
    hour: int
    policy: str
    revision: str
    tier: str
    band: str
    seen: int
    sampled: int
    confidence_sum: float = 0.0  # of the answers with a calibrated confidence (schema 3)
    confidence_n: int = 0


@dataclass(frozen=True, slots=True)
class LabelledItem:
    item: Item
    label: str | None
    note: str | None
    reviewer: str | None


ITEM_COLUMNS = tuple(Item.__dataclass_fields__)
EVENT_COLUMNS = tuple(Event.__dataclass_fields__)
SHADOW_COLUMNS = tuple(ShadowResult.__dataclass_fields__)


class Store:
    """SQL shared by both back ends; subclasses provide the connection and the dialect."""

    placeholder = "?"
    kind = "sql"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    # --- back-end hooks ------------------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _is_unavailable(self, err: Exception) -> bool:
        raise NotImplementedError

    def _lock_migrations(self, cur: Any) -> None:
        raise NotImplementedError

    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget a connection that failed (the next call reconnects)."""

    def close(self) -> None:
        raise NotImplementedError

    # --- plumbing ------------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _run(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                conn = self._connect()
                with self._transaction(conn):  # commit on success, roll back on error
                    cur = conn.cursor()
                    try:
                        return fn(cur)
                    finally:
                        cur.close()
            except StoreError:
                raise
            except Exception as err:
                if self._is_unavailable(err):
                    self._reset()
                    raise StoreError(f"review store unavailable: {err}".strip()) from err
                raise

    def migrate(self) -> int:
        """Apply missing migrations; returns the schema version."""

        def go(cur: Any) -> int:
            self._lock_migrations(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cur.execute("SELECT max(version) FROM schema_version")
            current = cur.fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the review store's schema is version {current}, newer than this tierguard "
                    f"({SCHEMA_VERSION}); upgrade tierguard"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements:
                    cur.execute(stmt)
                cur.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
                current = version
            return int(current)

        return self._run(go)

    # --- writes --------------------------------------------------------------------------------

    def add_items(self, items: Sequence[Item]) -> int:
        """Insert sampled items (an id already stored is ignored); returns how many were new."""
        if not items:
            return 0
        cols = ", ".join(ITEM_COLUMNS)
        marks = ", ".join("?" for _ in ITEM_COLUMNS)
        sql = self._sql(f"INSERT INTO items ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING")

        def go(cur: Any) -> int:
            # one statement for the batch (psycopg pipelines it: no round trip per row)
            cur.executemany(sql, [tuple(asdict(it).values()) for it in items])
            return max(cur.rowcount, 0)

        return self._run(go)

    def add_strata(self, rows: Iterable[StratumRow]) -> None:
        rows = list(rows)
        if not rows:
            return
        sql = self._sql(
            "INSERT INTO strata (hour, policy, revision, tier, band, seen, sampled, confidence_sum, "
            "confidence_n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, policy, revision, tier, band) DO UPDATE SET "
            "seen = strata.seen + excluded.seen, sampled = strata.sampled + excluded.sampled, "
            "confidence_sum = strata.confidence_sum + excluded.confidence_sum, "
            "confidence_n = strata.confidence_n + excluded.confidence_n"
        )

        def go(cur: Any) -> None:
            cur.executemany(sql, [astuple(r) for r in rows])

        self._run(go)

    def add_event(self, event: Event) -> bool:
        """Store an outcome event; False when the response already has an event of that name."""
        return self.add_events([event])[0]

    def add_events(self, events: Sequence[Event]) -> list[bool]:
        """Store outcome events in one transaction; per event, False for a duplicate."""
        cols = ", ".join(EVENT_COLUMNS)
        marks = ", ".join("?" for _ in EVENT_COLUMNS)
        sql = self._sql(
            f"INSERT INTO events ({cols}) VALUES ({marks}) ON CONFLICT (response_id, name) DO NOTHING"
        )

        def go(cur: Any) -> list[bool]:
            out = []
            for event in events:
                cur.execute(sql, tuple(asdict(event).values()))
                out.append(cur.rowcount == 1)
            return out

        return self._run(go)

    def add_shadow(self, results: Sequence[ShadowResult]) -> None:
        cols = ", ".join(SHADOW_COLUMNS)
        marks = ", ".join("?" for _ in SHADOW_COLUMNS)
        sql = self._sql(f"INSERT INTO shadow ({cols}) VALUES ({marks})")

        def go(cur: Any) -> None:
            cur.executemany(
                sql,
                [tuple(int(v) if isinstance(v, bool) else v for v in asdict(r).values()) for r in results],
            )

        self._run(go)

    def set_label(self, item_id: str, label: str, note: str, reviewer: str, ts: float | None = None) -> bool:
        """Label an item (a later label replaces an earlier one); False when the item is unknown."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        ts = time.time() if ts is None else ts

        def go(cur: Any) -> bool:
            cur.execute(self._sql("SELECT 1 FROM items WHERE id = ?"), (item_id,))
            if cur.fetchone() is None:
                return False
            cur.execute(
                self._sql(
                    "INSERT INTO labels (item_id, label, note, reviewer, ts) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (item_id) DO UPDATE SET label = excluded.label, note = excluded.note, "
                    "reviewer = excluded.reviewer, ts = excluded.ts"
                ),
                (item_id, label, note, reviewer, ts),
            )
            return True

        return self._run(go)

    def purge(self, older_than: float) -> int:
        """Delete everything recorded before ``older_than`` (a Unix time); returns rows deleted."""
        hour = int(older_than // 3600)

        def go(cur: Any) -> int:
            total = 0
            cur.execute(
                self._sql("DELETE FROM labels WHERE item_id IN (SELECT id FROM items WHERE ts < ?)"),
                (older_than,),
            )
            total += max(cur.rowcount, 0)
            for table in ("items", "events", "shadow"):
                cur.execute(self._sql(f"DELETE FROM {table} WHERE ts < ?"), (older_than,))
                total += max(cur.rowcount, 0)
            cur.execute(self._sql("DELETE FROM strata WHERE hour < ?"), (hour,))
            return total + max(cur.rowcount, 0)

        return self._run(go)

    # --- reads ---------------------------------------------------------------------------------

    def items(
        self,
        *,
        policy: str | None = None,
        revision: str | None = None,
        tier: str | None = None,
        band: str | None = None,
        unlabelled: bool = False,
        limit: int = 10_000,
    ) -> list[LabelledItem]:
        where, args = [], []
        for col, val in (("policy", policy), ("revision", revision), ("tier", tier), ("band", band)):
            if val is not None:
                where.append(f"i.{col} = ?")
                args.append(val)
        if unlabelled:
            where.append("l.label IS NULL")
        cols = ", ".join(f"i.{c}" for c in ITEM_COLUMNS)
        sql = (
            f"SELECT {cols}, l.label, l.note, l.reviewer FROM items i "
            "LEFT JOIN labels l ON l.item_id = i.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY i.ts, i.id LIMIT ?"
        )

        def go(cur: Any) -> list[LabelledItem]:
            cur.execute(self._sql(sql), (*args, limit))
            n = len(ITEM_COLUMNS)
            return [LabelledItem(Item(*row[:n]), row[n], row[n + 1], row[n + 2]) for row in cur.fetchall()]

        return self._run(go)

    def _select(
        self, sql: str, filters: Sequence[tuple[str, Any]], order: str, convert: Callable[[Any], T]
    ) -> list[T]:
        """Rows of ``sql`` where each (column or condition with ``?``, value) of ``filters`` with a
        value that is not None holds, in ``order``, each converted."""
        conds = [(c if "?" in c else f"{c} = ?", v) for c, v in filters if v is not None]
        if conds:
            sql += " WHERE " + " AND ".join(c for c, _ in conds)

        def go(cur: Any) -> list[T]:
            cur.execute(self._sql(f"{sql} ORDER BY {order}"), tuple(v for _, v in conds))
            return [convert(row) for row in cur.fetchall()]

        return self._run(go)

    def strata(self, policy: str | None = None) -> list[StratumRow]:
        sql = (
            "SELECT hour, policy, revision, tier, band, seen, sampled, confidence_sum, confidence_n "
            "FROM strata"
        )
        return self._select(sql, [("policy", policy)], "hour, revision, tier, band", lambda r: StratumRow(*r))

    def events(self, policy: str | None = None, since: float = 0.0) -> list[Event]:
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        return self._select(sql, [("ts >= ?", float(since)), ("policy", policy)], "ts", lambda r: Event(*r))

    def shadow_results(self, policy: str | None = None, revision: str | None = None) -> list[ShadowResult]:
        """Comparisons with the capable tier (shadow calls and escalated requests)."""
        sql = f"SELECT {', '.join(SHADOW_COLUMNS)} FROM shadow"
        return self._select(
            sql,
            [("policy", policy), ("revision", revision)],
            "ts, response_id, tier",
            _shadow_row,
        )


def _shadow_row(r: Sequence[Any]) -> ShadowResult:
    values = list(r)
    values[SHADOW_COLUMNS.index("agree")] = bool(values[SHADOW_COLUMNS.index("agree")])
    return ShadowResult(**dict(zip(SHADOW_COLUMNS, values, strict=True)))


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
                _set_wal(conn, deadline=time.monotonic() + 10.0)
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise StoreError(f"review store {self.path}: {err}") from None
            self._conn = conn
        return self._conn

    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        return conn  # sqlite3: commit or roll back, keep it open

    def _is_unavailable(self, err: Exception) -> bool:
        return isinstance(err, sqlite3.OperationalError)

    def _lock_migrations(self, cur: Any) -> None:
        # take the write lock before reading the schema version: another process migrating at the
        # same time waits (busy timeout) and then sees the migrations done
        cur.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _set_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """Switch a connection to WAL. On a new file the switch needs an exclusive lock and SQLite
    answers "database is locked" at once (no busy wait) while another replica holds it: retry."""
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


MIGRATION_LOCK = 0x74677276  # "tgrv": the advisory lock id migrations hold


class PostgresStore(Store):
    kind = "postgresql"
    placeholder = "%s"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        super().__init__()
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout)))
            except psycopg.Error as err:
                raise StoreError(f"review store {_redact_url(self.url)}: {err}".strip()) from None
        return self._conn

    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        return conn.transaction()  # (`with conn` would close it)

    def _is_unavailable(self, err: Exception) -> bool:
        import psycopg

        return isinstance(err, psycopg.OperationalError | psycopg.InterfaceError)

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    def close(self) -> None:
        with self._lock:
            self._reset()


def _redact_url(url: str) -> str:
    """A URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"


def open_store(url: str, migrate: bool = True) -> Store:
    """``sqlite:PATH`` or ``postgresql://...``; applies migrations unless told not to."""
    store: Store
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise StoreError("sqlite: needs a path, e.g. sqlite:review.db")
        store = SQLiteStore(path)
    elif url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(
                "a postgresql:// review store needs the psycopg package (pip install 'tierguard[postgres]')"
            ) from None
        store = PostgresStore(url)
    else:
        raise StoreError(f"unknown review store {url!r}: use sqlite:PATH or a postgresql:// URL")
    if migrate:
        store.migrate()
    return store
