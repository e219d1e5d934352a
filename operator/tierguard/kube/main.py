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
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import kopf

from ..errors import UserError
from ..metrics.provider import MetricsProvider, ProviderError
from ..policy import CascadePolicySpec, QualitySLOSpec
from ..rollout.analysis import observe
from ..rollout.observations import Observations
from ..rollout.status import PolicyStatus
from .client import KubeApi, KubeError, load_api_client
from .handlers import Observer, Reconciler, configure_settings, register

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


class UnconfiguredProvider:
    """The metrics provider when no Prometheus URL is given: every query fails."""

    def query(self, promql: str) -> float | None:
        raise ProviderError("no Prometheus configured (start the operator with --prometheus-url)")


def make_provider(url: str | None) -> MetricsProvider:
    if not url:
        return UnconfiguredProvider()
    from ..metrics.prometheus import PrometheusProvider

    return PrometheusProvider(url)


def metrics_observer(provider: MetricsProvider, *, namespace_label: bool = True) -> Observer:
    """The production observer: :func:`tierguard.rollout.analysis.observe` on ``provider``."""

    def observer(
        *,
        policy: str,
        namespace: str,
        spec: CascadePolicySpec,
        status: PolicyStatus,
        slos: Mapping[str, QualitySLOSpec],
        now: datetime,
    ) -> Observations:
        return observe(policy, namespace if namespace_label else None, spec, status, slos, provider)

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
    observer = metrics_observer(
        make_provider(args.prometheus_url), namespace_label=not args.no_namespace_label
    )
    registry, _ = build(api, observer)
    where = "all namespaces" if args.all_namespaces else ", ".join(args.namespace)
    log.info("tierguard operator watching %s, Prometheus %s", where, args.prometheus_url or "(none)")
    asyncio.run(
        operate(
            registry,
            namespaces=args.namespace or (),
            clusterwide=bool(args.all_namespaces),
            standalone=args.standalone,
            liveness=args.liveness,
        )
    )
    return 0
