"""``tierguard demo``: policy v1 serves, v2 rolls out step by step and is promoted, v3 breaks the
cheap tier's quality on the long tail and is rolled back automatically; live, on this machine.

Everything is real and local: etcd + kube-apiserver (built by ``tests/k8senv/build.sh``),
Prometheus (Debian's ``prometheus``), the operator, two proxy replicas fed the ConfigMap the
operator renders (copied into a file as a kubelet would), two simulators serving the synthetic
workload, and a load generator. Exit 0 only if the story happened as stated (:func:`story.judge`).

``tierguard demo --write-data FILE`` only writes the synthetic workload.
"""

from __future__ import annotations

import argparse
import signal
import socket
from types import FrameType

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
    parser.add_argument(
        "--port", type=int, default=8080, help="port of the first proxy replica (default 8080; 0: any free)"
    )
    parser.add_argument(
        "--report", default="tierguard-demo.html", help="HTML report (default ./tierguard-demo.html)"
    )
    parser.add_argument("--rps", type=float, default=40.0, help="load in requests per second (default 40)")
    parser.add_argument("--interval", default="4s", help="rollout analysis interval (default 4s)")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="progress lines instead of the live view (default without a terminal)",
    )
    parser.add_argument(
        "--workdir", default=None, help="keep logs and data here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="fail instead of building missing kube-apiserver/etcd with tests/k8senv/build.sh",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.rows < 1:
        raise UserError(f"--rows must be at least 1, got {args.rows}")
    if args.write_data:
        path = workload.write(args.write_data, seed=args.seed, rows=args.rows)
        print(f"wrote {args.rows} synthetic rows (seed {args.seed}) to {path}")
        return 0
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.rps <= 0:
        raise UserError(f"--rps must be positive, got {args.rps}")
    if args.port and not port_free(args.port):
        raise UserError(f"port {args.port} is taken; pass --port N (0 picks a free port)")
    from .runner import Demo, DemoError

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Demo(args) as demo:
            return demo.run()
    except DemoError as err:
        raise UserError(str(err)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
