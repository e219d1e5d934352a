"""The reviewer's page and its JSON API (served by ``tierguard review serve``).

    GET  /                 the page (self-contained: no remote resources)
    GET  /api/strata       strata with their sampled and unlabelled counts
    GET  /api/items        items of one stratum (?revision=&tier=&band=&unlabelled=1)
    POST /api/labels       {"item", "label": correct|incorrect|skip, "note"}; needs a reviewer token
                           (Authorization: Bearer TOKEN)
    GET  /api/quality      per-tier estimates with intervals, aggregates and net value
    GET  /metrics          tierguard_review_accuracy{,_lower} and tierguard_review_labels
    GET  /healthz

Errors are OpenAI-style JSON bodies (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .quality import QualityCollector, QualitySettings, policy_quality
from .store import LABELS, Store, StoreError
from .tokens import Reviewers

MAX_NOTE = 2000


def error(
    status: int,
    message: str,
    *,
    etype: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status)


class ReviewApp:
    def __init__(self, store: Store, reviewers: Reviewers, settings: QualitySettings) -> None:
        self.store = store
        self.reviewers = reviewers
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(QualityCollector(store, settings))
        self.page = resources.files(__package__).joinpath("page.html").read_bytes()
        app = self.app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/api/strata", self.strata)
        app.router.add_get("/api/items", self.items)
        app.router.add_post("/api/labels", self.label)
        app.router.add_get("/api/quality", self.quality)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.middlewares.append(self._store_errors)

    @web.middleware
    async def _store_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except StoreError as err:
            return error(503, str(err), etype="store_unavailable")

    async def index(self, _req: web.Request) -> web.Response:
        return web.Response(
            body=self.page,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'; img-src 'self' data:"
            },
        )

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def strata(self, _req: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.items, limit=1_000_000)
        out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for r in rows:
            it = r.item
            key = (it.policy, it.revision, it.tier, it.band)
            s = out.setdefault(
                key,
                {
                    "policy": it.policy,
                    "revision": it.revision,
                    "tier": it.tier,
                    "band": it.band,
                    "items": 0,
                    "unlabelled": 0,
                },
            )
            s["items"] += 1
            s["unlabelled"] += r.label is None
        return web.json_response(
            {"strata": sorted(out.values(), key=lambda s: (s["policy"], s["revision"], s["tier"], s["band"]))}
        )

    async def items(self, req: web.Request) -> web.Response:
        q = req.query
        try:
            limit = min(int(q.get("limit", "200")), 1000)
        except ValueError:
            return error(400, "'limit' must be an integer", param="limit")
        rows = await asyncio.to_thread(
            self.store.items,
            policy=q.get("policy"),
            revision=q.get("revision"),
            tier=q.get("tier"),
            band=q.get("band"),
            unlabelled=q.get("unlabelled") in ("1", "true"),
            limit=limit,
        )
        return web.json_response(
            {
                "items": [
                    {**asdict(r.item), "label": r.label, "note": r.note, "reviewer": r.reviewer} for r in rows
                ]
            }
        )

    async def label(self, req: web.Request) -> web.Response:
        auth = req.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        reviewer = self.reviewers.reviewer(token)
        if reviewer is None:
            return error(
                401,
                "a reviewer token is required (Authorization: Bearer TOKEN)",
                etype="authentication_error",
                code="invalid_token",
            )
        try:
            body = json.loads(await req.read())
        except (ValueError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        item_id, label, note = body.get("item"), body.get("label"), body.get("note", "")
        if not isinstance(item_id, str) or not item_id:
            return error(400, "'item' must be an item id", param="item")
        if label not in LABELS:
            return error(400, f"'label' must be one of {', '.join(LABELS)}", param="label")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            return error(400, f"'note' must be a string of at most {MAX_NOTE} characters", param="note")
        found = await asyncio.to_thread(self.store.set_label, item_id, label, note, reviewer)
        if not found:
            return error(404, f"no sampled item {item_id!r}", param="item", code="unknown_item")
        return web.json_response(
            {"status": "recorded", "item": item_id, "label": label, "reviewer": reviewer}
        )

    async def quality(self, _req: web.Request) -> web.Response:
        data = await asyncio.to_thread(policy_quality, self.store, self.settings)
        return web.json_response(
            {
                "confidence": self.settings.confidence,
                "cost_per_wrong": self.settings.cost_per_wrong,
                "cost_per_handoff": self.settings.cost_per_handoff,
                "policies": {p: [asdict(e) for e in ests] for p, ests in data.items()},
            }
        )

    async def metrics(self, _req: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
