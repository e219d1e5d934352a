"""The applied configuration as the request path uses it: swapped atomically on reload.

A request takes a reference to the current :class:`Runtime` once, at its start, and keeps it to
the end, so a reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import logging
import random
import zlib
from dataclasses import dataclass

import aiohttp

from ..policy import CAPABLE_ONLY, ProxyConfig, Revision
from .upstream import ConnectionKey, TierClient, TierConnection, connection_key

log = logging.getLogger("tierguard.proxy")


@dataclass
class RevisionRuntime:
    revision: Revision
    clients: list[TierClient]

    @property
    def name(self) -> str:
        return self.revision.name

    @property
    def capable_only(self) -> bool:
        return self.revision.mode == CAPABLE_ONLY


def canary_slot(sticky_key: str, salt: str) -> int:
    """The sticky key's slot in 0..99 for one rollout: salted with the canary revision's name, so
    each rollout draws its own users (unsalted, the same users would be the canary every time),
    while within a rollout a user in the canary at one weight stays in it at every higher weight."""
    return zlib.crc32(f"{salt}\x00{sticky_key}".encode()) % 100


class Runtime:
    def __init__(
        self, config: ProxyConfig, session: aiohttp.ClientSession, previous: Runtime | None = None
    ) -> None:
        self.config = config
        self.config_hash = config.config_hash()
        # One connection (and concurrency limit) per upstream, shared by the revisions that use it
        # and kept across reloads that do not change it.
        reuse: dict[ConnectionKey, TierConnection] = {}
        if previous is not None:
            for rev in previous.revisions():
                for c in rev.clients:
                    reuse[c.connection.key] = c.connection
        self.connections: dict[ConnectionKey, TierConnection] = {}
        self.stable = self._build(config.stable, session, reuse)
        self.canary = self._build(config.canary, session, reuse) if config.canary else None
        self.weight = config.canary_weight if self.canary else 0

    def _build(
        self, rev: Revision, session: aiohttp.ClientSession, reuse: dict[ConnectionKey, TierConnection]
    ) -> RevisionRuntime:
        clients = []
        for tier in rev.cascade.tiers:
            key = connection_key(tier)
            conn = self.connections.get(key)
            if conn is None:
                conn = reuse.get(key)
                if conn is None:
                    conn = TierConnection(tier, session)
                elif conn.refresh_key(tier):  # kept across the reload: its key file may have rotated
                    log.info("tier %s: API key changed", tier.name)
            self.connections[key] = conn
            clients.append(TierClient(tier, session, conn))
        return RevisionRuntime(rev, clients)

    def revisions(self) -> list[RevisionRuntime]:
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def pick(self, sticky_key: str | None) -> RevisionRuntime:
        """Choose the revision for a request: sticky per conversation when a key is given."""
        if self.canary is None or self.weight <= 0:
            return self.stable
        if self.weight >= 100:
            return self.canary
        slot = canary_slot(sticky_key, self.canary.name) if sticky_key else random.randrange(100)
        return self.canary if slot < self.weight else self.stable
