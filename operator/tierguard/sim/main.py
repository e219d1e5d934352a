"""``tierguard sim``: serve one model's recorded outcomes as an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..outcomes import load_outcomes
from .data import SimData
from .server import Faults, Simulator, check_faults, serve

SKIPPED_SHOWN = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="FILE.jsonl", help="recorded outcomes (JSONL)")
    parser.add_argument("--model", required=True, help="the model in the file whose answers to serve")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9101, help="listen port (default 9101)")
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiply recorded latencies by this (0 answers at once; default 1.0)",
    )
    parser.add_argument("--extra-latency-ms", type=float, default=0.0, help="added to every answer's latency")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests failed with --error-status"
    )
    parser.add_argument(
        "--error-status", type=int, default=500, help="HTTP status of injected errors (default 500)"
    )
    parser.add_argument(
        "--timeout-rate",
        type=float,
        default=0.0,
        help="share of requests that hang (until the client gives up, or --hang-seconds)",
    )
    parser.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        help="share of requests answered 200 with a truncated, unusable body",
    )
    parser.add_argument(
        "--stream-cut-rate",
        type=float,
        default=0.0,
        help="share of streams whose connection is dropped halfway, without [DONE]",
    )
    parser.add_argument(
        "--retry-after-s",
        type=float,
        default=0.0,
        help="injected 429/503 errors carry this Retry-After (seconds; default none)",
    )
    parser.add_argument(
        "--hang-seconds", type=float, default=600.0, help="how long a hanging request sleeps before a 504"
    )
    parser.add_argument(
        "--ttft-fraction",
        type=float,
        default=0.3,
        help="streaming: share of the latency before the first token (default 0.3)",
    )
    parser.add_argument(
        "--tool-call-logprobs",
        action="store_true",
        help="serve logprobs for tool-call tokens as vLLM does (OpenAI returns none; default off)",
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="require 'Authorization: Bearer $VAR' (a wrong key is refused with 401, quoting it)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for fault injection (default: random)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def _faults(args: argparse.Namespace) -> Faults:
    values = {
        "error_rate": args.error_rate,
        "error_status": args.error_status,
        "timeout_rate": args.timeout_rate,
        "malformed_rate": args.malformed_rate,
        "stream_cut_rate": args.stream_cut_rate,
        "retry_after_s": args.retry_after_s,
        "latency_scale": args.latency_scale,
        "extra_latency_ms": args.extra_latency_ms,
        "hang_seconds": args.hang_seconds,
        "ttft_fraction": args.ttft_fraction,
    }
    try:
        check_faults(values)
    except ValueError as err:
        raise UserError(f"--{str(err).replace('_', '-')}") from None
    return Faults(**values)


def load(path: str, model: str) -> SimData:
    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory, not an outcomes file")
    try:
        outcomes = load_outcomes(path)
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    if outcomes.skipped:
        print(
            f"tierguard sim: skipped {len(outcomes.skipped)} malformed line(s) in {path}:",
            file=sys.stderr,
        )
        for err in outcomes.skipped[:SKIPPED_SHOWN]:
            print(f"  line {err.line}: {err.reason}", file=sys.stderr)
        if len(outcomes.skipped) > SKIPPED_SHOWN:
            print(f"  ... and {len(outcomes.skipped) - SKIPPED_SHOWN} more", file=sys.stderr)
    if not outcomes.records:
        raise UserError(f"{path}: no valid outcome rows")
    models = outcomes.models
    if model not in models:
        raise UserError(f"model {model!r} is not in {path}; models in the file: {', '.join(models)}")
    data = SimData.build(outcomes, model)
    if data.duplicates:
        print(
            f"tierguard sim: {data.duplicates} repeated prompt(s) in {path}: the first row of each is served",
            file=sys.stderr,
        )
    return data


async def _main(sim: Simulator, host: str, port: int, data_path: str) -> None:
    try:
        runner = await serve(sim, host, port)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    bound = next((a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2), port)
    print(
        f"serving {sim.model} from {data_path} ({sim.data.prompts} prompts) on http://{host}:{bound}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    faults = _faults(args)
    data = load(args.data, args.model)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env: the environment variable {args.api_key_env} is not set")
    sim = Simulator(data, faults, args.seed, api_key, tool_call_logprobs=args.tool_call_logprobs)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(sim, args.host, args.port, args.data))
    return 0
