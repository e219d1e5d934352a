"""The review store's writer: a bounded queue drained by one thread, so sampling never waits.

``offer`` never blocks: a full queue drops the item and counts it (``queue_full``). The thread
opens the store itself (a database that is down at start-up delays nothing), writes in batches,
and counts a batch it could not write as dropped (``store_error``) instead of retrying forever.
Once an hour it deletes what is older than the retention.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .store import Item, ShadowResult, Store, StoreError, StratumRow

log = logging.getLogger("tierguard.review")

Record = Item | ShadowResult | list[StratumRow]


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


class ReviewWriter:
    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        queue_size: int = 1000,
        on_drop: Callable[[str, int], None] = lambda reason, n: None,
        retention_s: float | None = None,
        batch: int = 200,
        retry_s: float = 5.0,
    ) -> None:
        self._open = open_store
        self._queue: queue.Queue[Record | _Stop] = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self.retention_s = retention_s
        self.batch = batch
        self.retry_s = retry_s
        self.store: Store | None = None
        self._next_open = 0.0
        self._next_purge = 0.0
        self.written = 0
        self._thread = threading.Thread(target=self._loop, name="review-writer", daemon=True)
        self._thread.start()

    def offer(self, record: Record) -> bool:
        """Queue a record for the store; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self._on_drop("queue_full", 1)
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_Stop(), timeout=timeout)
        self._thread.join(timeout)
        if self.store is not None:
            self.store.close()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far was handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    # --- the thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            records = [first]
            while len(records) < self.batch:
                try:
                    records.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(isinstance(r, _Stop) for r in records)
            try:
                self._write([r for r in records if not isinstance(r, _Stop)])
            finally:
                for _ in records:
                    self._queue.task_done()
            if stop:
                return

    def _store(self) -> Store | None:
        if self.store is None and time.monotonic() >= self._next_open:
            try:
                self.store = self._open()
            except StoreError as err:
                log.warning("%s (retrying in %.0fs; sampled items are dropped meanwhile)", err, self.retry_s)
                self._next_open = time.monotonic() + self.retry_s
        return self.store

    def _write(self, records: list[Record]) -> None:
        if not records:
            return
        items = [r for r in records if isinstance(r, Item)]
        shadows = [r for r in records if isinstance(r, ShadowResult)]
        strata = [row for r in records if isinstance(r, list) for row in r]
        store = self._store()
        if store is None:
            self._on_drop("store_error", len(items) + len(shadows))
            return
        try:
            store.add_items(items)
            if shadows:
                store.add_shadow(shadows)
            store.add_strata(strata)
            self.written += len(items)
            self._purge(store)
        except StoreError as err:
            log.warning("%s: %d sampled items dropped", err, len(items) + len(shadows))
            self._on_drop("store_error", len(items) + len(shadows))
        except Exception:  # a bug must not kill the writer thread
            log.exception("review writer failed; %d records dropped", len(records))
            self._on_drop("store_error", len(items) + len(shadows))

    def _purge(self, store: Store) -> None:
        now = time.time()
        if self.retention_s is None or now < self._next_purge:
            return
        self._next_purge = now + 3600.0
        deleted = store.purge(now - self.retention_s)
        if deleted:
            log.info("review store: %d rows older than the retention deleted", deleted)
