"""One JSON line per request (and per feedback): what was decided, why, at what cost."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any


class DecisionLog:
    """Writes JSON lines to stdout or a file; flushed at least every ``flush_seconds``.

    ``None`` as the target disables the log.
    """

    def __init__(self, target: str | None, flush_seconds: float = 1.0) -> None:
        self._fh: IO[str] | None
        self._own = False
        if target is None:
            self._fh = None
        elif target == "-":
            self._fh = sys.stdout
        else:
            self._fh = open(target, "a", buffering=1 << 16)  # noqa: SIM115 - closed in close()
            self._own = True
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._fh.write(line)
            now = time.monotonic()
            if now - self._last_flush >= self._flush_seconds:
                self._fh.flush()
                self._last_flush = now

    def flush(self) -> None:
        if self._fh is not None:
            with self._lock:
                self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._own and self._fh is not None:
            self._fh.close()
            self._fh = None
