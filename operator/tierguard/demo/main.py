"""``tierguard demo``: policy v1 serves, v2 rolls out step by step and is promoted, v3 breaks the
cheap tier's quality on the long tail and is rolled back automatically; live, on this machine.

``tierguard demo --write-data FILE`` only writes the synthetic workload the demo serves.
"""

from __future__ import annotations

import argparse

from . import workload


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-data",
        metavar="FILE.jsonl",
        default=None,
        help="write the synthetic customer-support outcomes (for tierguard sim/replay) and exit",
    )
    parser.add_argument("--seed", type=int, default=workload.DEFAULT_SEED, help="workload seed (default 7)")
    parser.add_argument(
        "--rows", type=int, default=workload.DEFAULT_ROWS, help="workload rows (default 2000)"
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.rows < 1:
        raise UserError(f"--rows must be at least 1, got {args.rows}")
    if args.write_data:
        path = workload.write(args.write_data, seed=args.seed, rows=args.rows)
        print(f"wrote {args.rows} synthetic rows (seed {args.seed}) to {path}")
        return 0
    raise UserError("nothing to do yet")
