"""Conversation affinity in the proxy: which tier a turn starts at, and remembering where it ended.

The table itself is :class:`tierguard.affinity.AffinityTable` (pure). This adapter reads the
conversation key from the request, applies the revision's ``affinity`` mode, keeps the table's
bounds in step with the settings on reload, and reports the table's size (``on_size``). Its
:meth:`ConversationAffinity.record` runs in a recorder observer
(:class:`tierguard.proxy.observers.AffinityObserver`); :meth:`start_tier` at the start of a turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..affinity import AffinityTable
from ..policy import ProxySettings
from .runtime import RevisionRuntime

CONVERSATION_HEADER = "x-tierguard-conversation"
SESSION_HEADER = "x-tierguard-session"


def conversation_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The client's conversation id: the conversation header, else the session header, else ``user``."""
    key = headers.get(CONVERSATION_HEADER) or headers.get(SESSION_HEADER) or body.get("user")
    return key if isinstance(key, str) and key else None


class ConversationAffinity:
    def __init__(
        self,
        settings: ProxySettings,
        on_size: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = AffinityTable(settings.affinity_max_conversations, settings.affinity_ttl_seconds)
        self.on_size = on_size  # told the table's size after each change (a gauge)
        self.clock = clock

    def configure(self, settings: ProxySettings) -> None:
        self.table.resize(settings.affinity_max_conversations, settings.affinity_ttl_seconds)

    @staticmethod
    def _names(rev: RevisionRuntime) -> list[str]:
        return [c.tier.name for c in rev.clients]

    def start_tier(self, rev: RevisionRuntime, key: str | None) -> int:
        """Where this turn starts: the remembered tier under ``sticky``, else the cheapest."""
        if key is None or rev.capable_only or rev.revision.cascade.affinity_mode != "sticky":
            return 0
        return self.table.start_tier(key, self._names(rev), self.clock())

    def record(self, rev: RevisionRuntime, key: str | None, answered: int | None) -> None:
        """After a turn: remember the tier that answered it (sticky revisions only)."""
        if (
            key is None
            or answered is None
            or rev.capable_only
            or rev.revision.cascade.affinity_mode != "sticky"
        ):
            return
        self.table.record(key, self._names(rev), answered, self.clock())
        if self.on_size is not None:
            self.on_size(len(self.table))
