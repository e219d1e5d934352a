"""``tierguard proxy``: run the cascade proxy."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from ..errors import UserError
from ..policy import PolicyError
from .app import ProxyApp
from .decision_log import DecisionLog
from .ids import IdSigner, load_key
from .reload import read_config, watch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", required=True, help="CascadePolicy (manifest or spec) or ProxyConfig file"
    )
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=port_number, default=8080, help="listen port (default 8080)")
    parser.add_argument(
        "--decision-log",
        default=None,
        help="decision log target: a file path, '-' for stdout, 'off' (default: from config)",
    )
    parser.add_argument(
        "--reload-interval", type=float, default=1.0, help="seconds between policy file checks"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM keep serving this long, not ready and closing every connection after its "
        "response, so that clients move to other replicas before this one stops (default 0: stop "
        "at once; the operator's proxy pods use 5)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def build(args: argparse.Namespace) -> tuple[ProxyApp, str]:
    path = Path(args.policy)
    try:
        digest, config = read_config(path)
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror}") from None
    target = args.decision_log if args.decision_log is not None else config.settings.decision_log
    if target == "off":
        target = None
    try:
        key, key_source = load_key(config.settings.feedback_key)
    except ValueError as err:
        raise UserError(str(err)) from None
    logging.getLogger("tierguard.proxy").info("feedback ids signed with key from %s", key_source)
    proxy = ProxyApp(
        config, IdSigner(key), DecisionLog(target), decision_log_fixed=args.decision_log is not None
    )
    return proxy, digest


# Young-generation collections every 10,000 net container allocations instead of 700: a request
# allocates a few hundred, so the default collects every few requests (see BENCHMARKS.md).
GC_THRESHOLDS = (10_000, 20, 100)


async def freeze_heap(_app: web.Application) -> None:
    """Move everything alive once the proxy is set up (modules, config, app) out of the collector's
    sight: full collections then only scan objects created since, and stay short."""
    gc.collect()
    gc.freeze()


def _graceful_exit() -> None:
    raise web.GracefulExit()  # what aiohttp's own signal handler raises: run_app shuts down


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    proxy, digest = build(args)
    path = Path(args.policy)

    async def start_watcher(app: web.Application) -> None:
        def on_invalid(msg: str) -> None:
            proxy.metrics.reloads.labels(proxy.metrics.policy, "invalid").inc()
            proxy.metrics.config_rejected.set(1)
            proxy.config_error = msg

        def apply(config: object) -> None:
            proxy.apply(config)  # type: ignore[arg-type]
            proxy.metrics.reloads.labels(proxy.metrics.policy, "applied").inc()
            proxy.metrics.config_rejected.set(0)
            proxy.config_error = None

        app["watcher"] = asyncio.create_task(
            watch(
                path,
                digest,
                apply,
                on_invalid,
                args.reload_interval,
                initial_config=proxy.runtime.config if proxy.runtime else None,
            )
        )

    async def stop_watcher(app: web.Application) -> None:
        app["watcher"].cancel()

    async def drain_on_sigterm(_app: web.Application) -> None:
        # replaces aiohttp's own SIGTERM handler (installed before the app starts)
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            if proxy.draining:
                return
            proxy.draining = True
            logging.getLogger("tierguard.proxy").info("SIGTERM: draining for %.1fs", args.drain_seconds)
            loop.call_later(args.drain_seconds, _graceful_exit)

        loop.add_signal_handler(signal.SIGTERM, on_term)

    if args.drain_seconds > 0:
        proxy.app.on_startup.append(drain_on_sigterm)
    proxy.app.on_startup.append(start_watcher)
    proxy.app.on_startup.append(freeze_heap)
    proxy.app.on_cleanup.append(stop_watcher)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        # the tier clients are built at start-up; a bad API key source fails here, before serving
        print(
            f"tierguard proxy: policy {args.policy} on http://{args.host}:{args.port}",
            file=sys.stderr,
            flush=True,
        )
        web.run_app(
            proxy.app,
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            handle_signals=True,
            shutdown_timeout=10.0,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    except PolicyError:
        raise
    return 0
