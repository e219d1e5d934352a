"""``tierguard review``: the reviewer's page, and the novelty reference for review sampling.

tierguard review serve --store URL --tokens FILE [--host 127.0.0.1] [--port 8090]
                       [--cost-per-wrong USD] [--cost-per-handoff USD]
tierguard review novelty-reference --data FILE.jsonl [--split train] --out REF.json
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from .novelty import NoveltyReference
from .quality import QualitySettings
from .store import StoreError, open_store
from .tokens import Reviewers


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = sub.add_parser("serve", help="serve the reviewer's page and its API")
    serve.add_argument(
        "--store", required=True, help="sqlite:PATH or a postgresql:// URL (the proxies' store)"
    )
    serve.add_argument(
        "--tokens",
        required=True,
        metavar="FILE",
        help="reviewer tokens, one 'reviewer:token' per line (e.g. a mounted Secret)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8090, help="listen port (default 8090)")
    serve.add_argument(
        "--cost-per-wrong",
        type=float,
        default=0.0,
        metavar="USD",
        help="estimated cost of one wrong answer, for the net value (default 0)",
    )
    serve.add_argument(
        "--cost-per-handoff",
        type=float,
        default=0.0,
        metavar="USD",
        help="estimated cost of one human handoff, for the net value (default 0)",
    )
    serve.add_argument(
        "--handoff-event",
        default="human_handoff",
        help="the outcome event counted as a handoff (default human_handoff)",
    )
    serve.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    ref = sub.add_parser("novelty-reference", help="build the novelty reference from calibration prompts")
    ref.add_argument(
        "--data", required=True, metavar="FILE.jsonl", help="recorded outcomes (the calibration rows)"
    )
    ref.add_argument(
        "--split", default="train", help="rows of this split (default train; 'all' for every row)"
    )
    ref.add_argument("--benchmark", default=None, help="only rows of this benchmark")
    ref.add_argument("--out", required=True, metavar="REF.json", help="where to write the reference")


def run(args: argparse.Namespace) -> int:
    if args.action == "novelty-reference":
        return _reference(args)
    return _serve(args)


def _reference(args: argparse.Namespace) -> int:
    from ..outcomes import load_outcomes

    outcomes = load_outcomes(args.data)
    rows = outcomes.filter(benchmark=args.benchmark, split=None if args.split == "all" else args.split)
    if not rows:
        raise UserError(
            f"{args.data}: no rows with split={args.split!r}"
            + (f" and benchmark={args.benchmark!r}" if args.benchmark else "")
        )
    ref = NoveltyReference.build(
        (r.user_prompt for r in rows),
        meta={"data": args.data, "split": args.split, "benchmark": args.benchmark},
    )
    ref.save(args.out)
    print(f"novelty reference from {ref.docs} prompts written to {args.out}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .server import ReviewApp

    if not 0 < args.confidence < 1:
        raise UserError("--confidence must be between 0 and 1")
    if args.cost_per_wrong < 0 or args.cost_per_handoff < 0:
        raise UserError("costs must not be negative")
    try:
        reviewers = Reviewers.load(args.tokens)
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        store = open_store(args.store)
    except StoreError as err:
        raise UserError(str(err)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = QualitySettings(
        args.confidence, args.cost_per_wrong, args.cost_per_handoff, args.handoff_event
    )
    app = ReviewApp(store, reviewers, settings)
    print(
        f"tierguard review: http://{args.host}:{args.port}/ (store {store.kind})", file=sys.stderr, flush=True
    )
    try:
        web.run_app(app.app, host=args.host, port=args.port, print=None, access_log=None)
    finally:
        store.close()
    return 0
