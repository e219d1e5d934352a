"""The applied configuration as the request path uses it: swapped atomically on reload.

A request takes a reference to the current :class:`Runtime` once, at its start, and keeps it to
the end, so a reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import aiohttp

from ..policy import CAPABLE_ONLY, ProxyConfig, Revision
from .upstream import TierClient


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


class Runtime:
    def __init__(
        self, config: ProxyConfig, session: aiohttp.ClientSession, previous: Runtime | None = None
    ) -> None:
        self.config = config
        self.config_hash = config.config_hash()
        # Reuse tier clients (and their concurrency limits) whose tier did not change.
        reuse: dict[str, TierClient] = {}
        if previous is not None:
            for rev in previous.revisions():
                for c in rev.clients:
                    reuse[c.tier.model_dump_json()] = c
        self.stable = self._build(config.stable, session, reuse)
        self.canary = self._build(config.canary, session, reuse) if config.canary else None
        self.weight = config.canary_weight if self.canary else 0

    @staticmethod
    def _build(
        rev: Revision, session: aiohttp.ClientSession, reuse: dict[str, TierClient]
    ) -> RevisionRuntime:
        clients = []
        for tier in rev.cascade.tiers:
            key = tier.model_dump_json()
            client = reuse.get(key)
            if client is None:
                client = reuse[key] = TierClient(tier, session)
            clients.append(client)
        return RevisionRuntime(rev, clients)

    def revisions(self) -> list[RevisionRuntime]:
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def pick(self, sticky_key: str | None) -> RevisionRuntime:
        """Choose the revision for a request: sticky per conversation when a key is given."""
        if self.canary is None or self.weight <= 0:
            return self.stable
        if self.weight >= 100:
            return self.canary
        slot = zlib.crc32(sticky_key.encode()) % 100 if sticky_key else random.randrange(100)
        return self.canary if slot < self.weight else self.stable
