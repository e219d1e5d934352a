"""The proxy's applied configuration: canary assignment per rollout and one connection per upstream."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import aiohttp
import httpx
import yaml

from procs import start_proxy, start_sim, write_outcomes
from test_proxy import MODELS, ROWS, cascade, chat, post
from tierguard.policy import CascadeSpec, ProxyConfig, Revision
from tierguard.proxy.runtime import Runtime, canary_slot
from tierguard.proxy.upstream import connection_key

USERS = [f"user-{i}" for i in range(4000)]


def canary_users(salt: str, weight: int) -> set[str]:
    return {u for u in USERS if canary_slot(u, salt) < weight}


def test_each_rollout_draws_its_own_canary_users():
    first, second = canary_users("rev-a", 10), canary_users("rev-b", 10)
    assert 0.08 < len(first) / len(USERS) < 0.12 and 0.08 < len(second) / len(USERS) < 0.12
    overlap = len(first & second) / len(first)
    # independent draws share about 10% of their users; unsalted they shared all of them
    assert overlap < 0.25, overlap


def test_within_a_rollout_a_canary_user_stays_in_at_higher_weights():
    for low, high in ((5, 10), (10, 25), (25, 50), (50, 99)):
        assert canary_users("rev-a", low) <= canary_users("rev-a", high)


def spec_with(thresholds: tuple[float, ...], **tier0: Any) -> CascadeSpec:
    tiers = [
        {"name": m, "baseUrl": f"http://127.0.0.1:{9000 + i}/v1", "model": m, "maxConcurrency": 4,
         "priceInputPerMillion": 1.0 + i, "confidence": {"threshold": thresholds[i]}}
        for i, m in enumerate(("cheap", "big"))
    ]  # fmt: skip
    tiers[0].update(tier0)
    return CascadeSpec.model_validate({"tiers": tiers})


def runtime(stable: CascadeSpec, canary: CascadeSpec | None, previous: Runtime | None = None) -> Runtime:
    async def build() -> Runtime:
        async with aiohttp.ClientSession() as session:
            cfg = ProxyConfig(
                stable=Revision.of(stable),
                canary=Revision.of(canary) if canary else None,
                canary_weight=20 if canary else 0,
            )
            return Runtime(cfg, session, previous)

    return asyncio.run(build())


def test_stable_and_canary_share_a_connection_when_only_the_judgement_differs():
    rt = runtime(spec_with((0.8, 0.5)), spec_with((0.6, 0.5), priceInputPerMillion=9.0, timeoutSeconds=3))
    assert rt.canary is not None
    for s, c in zip(rt.stable.clients, rt.canary.clients):
        assert s.connection is c.connection and s.semaphore is c.semaphore
    assert len(rt.connections) == 2
    # what is the revision's own stays its own: prices, timeout, threshold
    assert rt.canary.clients[0].tier.price_input_per_million == 9.0
    assert rt.stable.clients[0].tier.price_input_per_million == 1.0
    assert rt.canary.clients[0].timeout.total == 3 and rt.stable.clients[0].timeout.total == 30


def test_a_different_endpoint_model_or_limit_is_a_connection_of_its_own():
    base = spec_with((0.8, 0.5))
    for change in ({"baseUrl": "http://127.0.0.1:9100/v1"}, {"model": "other"}, {"maxConcurrency": 8}):
        rt = runtime(base, spec_with((0.8, 0.5), **change))
        assert rt.canary is not None
        assert rt.stable.clients[0].connection is not rt.canary.clients[0].connection, change
        assert rt.stable.clients[1].connection is rt.canary.clients[1].connection
    assert connection_key(spec_with((0.8, 0.5), baseUrl="http://127.0.0.1:9000/v1/").tiers[0]) == (
        connection_key(base.tiers[0])
    )


def test_a_reload_keeps_the_connections_it_still_uses():
    first = runtime(spec_with((0.8, 0.5)), None)
    second = runtime(spec_with((0.8, 0.5)), spec_with((0.7, 0.5)), previous=first)
    assert second.canary is not None
    assert second.stable.clients[0].connection is first.stable.clients[0].connection
    assert second.canary.clients[0].connection is first.stable.clients[0].connection


def test_max_concurrency_holds_across_stable_and_canary(tmp_path):
    """A real proxy serving a stable and a canary that differ only in thresholds, 24 requests at
    once, cheap tier limited to 2: the cheap simulator never sees more than 2 (it saw 4 when each
    revision had a pool of its own)."""
    data = write_outcomes(tmp_path / "o.jsonl", ROWS)
    sims = {m: start_sim(data, m, latency_scale=0) for m in MODELS}
    try:
        httpx.post(f"{sims['cheap'].base}/admin/faults", json={"extra_latency_ms": 200}).raise_for_status()
        stable, canary = cascade(sims, (0.8, 0.8)), cascade(sims, (0.7, 0.7))
        for spec in (stable, canary):
            spec["tiers"][0]["maxConcurrency"] = 2
        cfg = {
            "kind": "ProxyConfig", "policy": "unit",
            "stable": {"name": "rev-stable", "cascade": stable},
            "canary": {"name": "rev-canary", "cascade": canary},
            "canaryWeight": 50, "settings": {"decisionLog": None},
        }  # fmt: skip
        f = tmp_path / "cfg.yaml"
        f.write_text(yaml.safe_dump(cfg))
        with start_proxy(f) as p, concurrent.futures.ThreadPoolExecutor(24) as pool:
            httpx.post(f"{sims['cheap'].base}/admin/stats/reset").raise_for_status()
            replies = list(pool.map(lambda i: post(p, chat("easy question", user=f"u{i}")), range(24)))
            assert all(r.status_code == 200 for r in replies)
            assert {r.headers["x-tierguard-revision"] for r in replies} == {"rev-stable", "rev-canary"}
            stats = httpx.get(f"{sims['cheap'].base}/admin/stats").json()
            assert stats["requests"] == 24 and stats["max_in_flight"] == 2, stats
    finally:
        for s in sims.values():
            s.stop()
