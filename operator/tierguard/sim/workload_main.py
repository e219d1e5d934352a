"""``tierguard workload``: write the labelled synthetic support-agent workload (outcomes JSONL)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..workload import CAPABLE, CHEAP, generate


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="where to write the rows")
    parser.add_argument("--conversations", type=int, default=300, help="conversations (default 300)")
    parser.add_argument("--seed", type=int, default=11, help="the same seed gives the same file (default 11)")
    parser.add_argument(
        "--test-share", type=float, default=0.5, help="share of conversations in the test split (default 0.5)"
    )


def run(args: argparse.Namespace) -> int:
    if args.conversations < 1:
        raise UserError(f"--conversations must be at least 1, got {args.conversations}")
    if not 0.0 <= args.test_share <= 1.0:
        raise UserError(f"--test-share must be between 0 and 1, got {args.test_share}")
    rows = generate(args.conversations, args.seed, args.test_share)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    kinds = Counter(r["category"] for r in rows)
    tool_turns = sum(n for k, n in kinds.items() if k not in ("text", "ticket"))
    print(
        f"wrote {len(rows)} turns of {args.conversations} conversations to {out} "
        f"({tool_turns} tool-call turns, {kinds['ticket']} structured-output turns; "
        f"models {CHEAP}, {CAPABLE}; seed {args.seed})",
        file=sys.stderr,
    )
    return 0
