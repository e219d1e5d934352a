"""``tierguard operator``: run the Kubernetes operator (kopf).

    tierguard operator --namespace NS [--namespace NS2 ...] --prometheus-url URL [--standalone]
    tierguard operator --all-namespaces --prometheus-url URL

Credentials: ``--kubeconfig``, else in-cluster (a ServiceAccount), else ``$KUBECONFIG`` /
``~/.kube/config``. Without ``--prometheus-url`` every analysis holds with ``ProviderError``: a
rollout then only moves by hand (``tierguard promote NAME``), and never rolls back on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import kopf

from ..errors import UserError
from ..metrics.provider import MetricsProvider, ProviderError
from ..policy import CascadePolicySpec, QualitySLOSpec
from ..rollout.analysis import observe
from ..rollout.observations import Observations
from ..rollout.shadow_observe import with_shadow
from ..rollout.status import PolicyStatus
from .client import KubeApi, KubeError, load_api_client
from .handlers import Observer, Reconciler, configure_settings, register
from .lease import LeaderElector, Timings

log = logging.getLogger("tierguard.operator")


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-n", "--namespace", action="append", default=None, help="watch this namespace (repeatable)"
    )
    where.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("TIERGUARD_PROMETHEUS_URL"),
        help="Prometheus scraping the proxies (default: $TIERGUARD_PROMETHEUS_URL)",
    )
    parser.add_argument(
        "--prometheus-timeout",
        type=_positive_seconds,
        default=os.environ.get("TIERGUARD_PROMETHEUS_TIMEOUT", "10"),  # argparse converts it
        metavar="S",
        help="seconds one Prometheus query may take before the analysis holds with ProviderError "
        "(default 10, or $TIERGUARD_PROMETHEUS_TIMEOUT)",
    )
    parser.add_argument(
        "--no-namespace-label",
        action="store_true",
        help="leave the namespace label out of queries (a Prometheus whose scrape does not add it)",
    )
    parser.add_argument("--standalone", action="store_true", help="no kopf peering (a single operator)")
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, $KUBECONFIG)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--liveness", default=None, metavar="URL", help="e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    elect = parser.add_argument_group("leader election (several replicas: only the Lease holder acts)")
    elect.add_argument("--leader-elect", action="store_true", help="hold a coordination.k8s.io Lease to act")
    elect.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the Lease (default: $POD_NAMESPACE, else the first --namespace)",
    )
    elect.add_argument("--lease-name", default="tierguard-operator", help="name of the Lease")
    elect.add_argument("--lease-duration", type=float, default=15.0, metavar="S",
                       help="a silent leader is replaced after this long (default 15)")  # fmt: skip
    elect.add_argument("--renew-deadline", type=float, default=10.0, metavar="S",
                       help="a leader unable to renew this long stops acting (default 10)")  # fmt: skip
    elect.add_argument("--retry-period", type=float, default=2.0, metavar="S",
                       help="how often the Lease is renewed or tried (default 2)")  # fmt: skip
    elect.add_argument(
        "--identity", default=None, help="this replica's name in the Lease (default: host-pid)"
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


class UnconfiguredProvider:
    """The metrics provider when no Prometheus URL is given: every query fails."""

    def query(self, promql: str) -> float | None:
        raise ProviderError("no Prometheus configured (start the operator with --prometheus-url)")


def make_provider(url: str | None, timeout: float = 10.0) -> MetricsProvider:
    """The Prometheus at ``url``; ``timeout`` bounds each query (a slow Prometheus is a
    ``ProviderError`` hold after that long, never a stuck reconcile)."""
    if not url:
        return UnconfiguredProvider()
    from ..metrics.prometheus import PrometheusProvider

    return PrometheusProvider(url, timeout=timeout)


def metrics_observer(provider: MetricsProvider, *, namespace_label: bool = True) -> Observer:
    """The production observer: :func:`tierguard.rollout.analysis.observe` on ``provider``, plus
    what the shadow-rate choice needs (:func:`tierguard.rollout.shadow_observe.with_shadow`)."""

    def observer(
        *,
        policy: str,
        namespace: str,
        spec: CascadePolicySpec,
        status: PolicyStatus,
        slos: Mapping[str, QualitySLOSpec],
        now: datetime,
    ) -> Observations:
        ns = namespace if namespace_label else None
        obs = observe(policy, ns, spec, status, slos, provider)
        return with_shadow(obs, policy, ns, spec, status, provider)

    return observer


def build(
    api: KubeApi, observer: Observer, *, service_monitors: bool | None = None
) -> tuple[kopf.OperatorRegistry, Reconciler]:
    """A registry with every handler, and the reconciler behind them."""
    reconciler = Reconciler(api, observer, service_monitors=service_monitors)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(api.api_client)

    return registry, reconciler


def connection_info(api_client: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the same ``kubernetes`` client configuration the reconciler uses."""
    cfg = api_client.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


async def operate(
    registry: kopf.OperatorRegistry,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    standalone: bool = True,
    liveness: str | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings)
    await kopf.operator(
        registry=registry,
        settings=settings,
        namespaces=list(namespaces),
        clusterwide=clusterwide,
        standalone=standalone,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def check_crds(api: KubeApi) -> None:
    """Fail early and clearly when the CRDs are missing (kopf would only serve them after a restart)."""
    from .. import API_GROUP, API_VERSION
    from .client import PLURAL_POLICIES, PLURAL_SLOS

    try:
        missing = [
            p for p in (PLURAL_POLICIES, PLURAL_SLOS) if not api.has_resource(API_GROUP, API_VERSION, p)
        ]
    except KubeError as err:
        raise UserError(f"cannot reach the API server: {err}") from None
    if missing:
        raise UserError(
            f"the CRDs for {', '.join(missing)} ({API_GROUP}/{API_VERSION}) are not installed: "
            "run 'tierguard crds | kubectl apply -f -' (or install the Helm chart)"
        )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.namespace and not args.all_namespaces:
        raise UserError("say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces")
    try:
        api = KubeApi(load_api_client(args.kubeconfig, args.context))
    except Exception as err:
        raise UserError(f"cannot load Kubernetes credentials: {err}") from None
    if not args.prometheus_url:
        log.warning("no --prometheus-url: analyses hold (ProviderError); rollouts move only by hand")
    provider = make_provider(args.prometheus_url, args.prometheus_timeout)
    observer = metrics_observer(provider, namespace_label=not args.no_namespace_label)
    registry, _ = build(api, observer)
    where = "all namespaces" if args.all_namespaces else ", ".join(args.namespace)
    elector = _elector(args, api) if args.leader_elect else None
    if elector is not None and not _wait_to_lead(elector, args.liveness):
        return 0  # stopped while waiting
    log.info("tierguard operator watching %s, Prometheus %s", where, args.prometheus_url or "(none)")
    stop_renewing = threading.Event()
    if elector is not None:
        threading.Thread(
            target=elector.keep_renewing, args=(stop_renewing, _lost_leadership), daemon=True
        ).start()
    try:
        asyncio.run(
            operate(
                registry,
                namespaces=args.namespace or (),
                clusterwide=bool(args.all_namespaces),
                standalone=args.standalone or elector is not None,
                liveness=args.liveness,
            )
        )
    finally:
        stop_renewing.set()
        if elector is not None:
            elector.release()
    return 0


def _elector(args: argparse.Namespace, api: KubeApi) -> LeaderElector:
    namespace = args.lease_namespace or (args.namespace[0] if args.namespace else None)
    if not namespace:
        raise UserError("--leader-elect with --all-namespaces needs --lease-namespace (or $POD_NAMESPACE)")
    try:
        timings = Timings(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as err:
        raise UserError(str(err)) from None
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    return LeaderElector(api, namespace, args.lease_name, identity, timings)


def _wait_to_lead(elector: LeaderElector, liveness: str | None) -> bool:
    """Block until this replica holds the Lease; SIGTERM/SIGINT end the wait. A waiting replica
    is alive: its liveness endpoint answers meanwhile (kopf serves it once leading)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server = serve_liveness(liveness) if liveness else None
    try:
        log.info("leader election: %s waits for the Lease %s/%s", elector.identity, elector.namespace,
                 elector.name)  # fmt: skip
        leading = elector.acquire(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if leading:
        log.info("leader election: %s leads", elector.identity)
    return leading


def _lost_leadership() -> None:
    # client-go's choice: a replica that may no longer be the leader stops at once (its restart
    # makes it a follower); finishing work in flight could overlap with the new leader's.
    log.error("leader election: the Lease could not be renewed in time; exiting so another replica leads")
    logging.shutdown()
    os._exit(1)


def serve_liveness(url: str) -> http.server.ThreadingHTTPServer:
    """A minimal ``200 ok`` on the liveness URL's port, in a thread."""
    parsed = urllib.parse.urlsplit(url)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"waiting for the lease\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
