"""Conversation affinity: later turns of a conversation start at the tier it escalated to.

Pure data structure, no I/O, no clock of its own (callers pass ``now``). The proxy keeps one
table per process, keyed by a client-supplied conversation id (the ``x-tierguard-conversation``
header, else ``x-tierguard-session``, else the request's ``user``). An entry remembers the highest
tier *name* the conversation was answered by, so it survives reloads that keep tier names and
means nothing to a revision without that tier. The table is bounded (least recently used
conversations are forgotten first) and entries expire after ``ttl_s`` of inactivity.

With ``affinity: restart`` (the default) a revision starts every turn at its cheapest tier; with
``sticky`` :meth:`AffinityTable.start_tier` gives the remembered tier's index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class AffinityTable:
    __slots__ = ("_entries", "max_entries", "ttl_s")

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("an affinity table needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        # conversation -> (tier name, expiry time); insertion order = least recently used first
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, max_entries: int, ttl_s: float) -> None:
        """New bounds (a reload); the oldest entries go when the table is now too big."""
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("an affinity table needs max_entries >= 1 and ttl_s > 0")
        self.max_entries, self.ttl_s = max_entries, ttl_s
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    def tier_of(self, key: str, now: float) -> str | None:
        """The remembered tier of a live conversation (an expired one is forgotten)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def start_tier(self, key: str | None, tiers: Sequence[str], now: float) -> int:
        """Index in ``tiers`` to start this turn at: the remembered tier, else 0."""
        if not key:
            return 0
        name = self.tier_of(key, now)
        if name is None:
            return 0
        try:
            return tiers.index(name)
        except ValueError:
            return 0

    def record(self, key: str | None, tiers: Sequence[str], answered: int, now: float) -> None:
        """Remember that this turn was answered by ``tiers[answered]``; never lowers the tier.

        A turn answered by the cheapest tier is only remembered when the conversation already
        has an entry (to refresh its expiry): conversations that never escalate cost nothing.
        """
        if not key:
            return
        current = self.tier_of(key, now)
        remembered = tiers.index(current) if current is not None and current in tiers else None
        if answered == 0 and remembered is None:
            return
        if remembered is not None and remembered > answered:
            answered = remembered
        entries = self._entries
        entries[key] = (tiers[answered], now + self.ttl_s)
        entries.move_to_end(key)
        self._evict(now)

    def _evict(self, now: float) -> None:
        entries = self._entries
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        # TTL is the same for all, so the least recently touched entries expire first
        while entries:
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[key]
