"""Pytest fixtures for the real-component test infrastructure.

Use from a conftest (with ``tests`` on ``sys.path``, e.g. pytest's
``pythonpath = ["tests", "operator"]``)::

    pytest_plugins = ["infra.fixtures"]

Fixtures:
    kube_cluster            session   a started :class:`infra.kube.KubeCluster`
    kube_namespace          function  a fresh namespace name in ``kube_cluster``
    node_cluster            session   a started :class:`infra.node.NodeCluster` (pods run); under
                                      CI=true a host that cannot run it fails, elsewhere skips
    prometheus_factory      function  ``make(targets=(), **kwargs) -> PrometheusServer``;
                                      every server made is stopped at test end
    prometheus_session_factory  session  same, servers live for the session
    prometheus_server       function  one started server (no targets; see set_targets)

Missing binaries are built by ``tests/k8senv/build.sh`` before the first test
that needs them runs (at collection time, outside the per-test timeout); the
build is cached. Set ``TIERGUARD_NO_BUILD=1`` to fail instead of building, and
``TIERGUARD_NO_KCM=1`` to run without kube-controller-manager.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from infra.images import ImageBuildError, ensure_images
from infra.node import NodeCluster, NodeUnavailable, host_problem
from tierguard.localenv.binaries import (
    NODE_BINARIES,
    MissingBinaryError,
    ensure_binaries,
    is_current,
    missing,
)
from tierguard.localenv.kube import KubeCluster
from tierguard.localenv.prometheus import PrometheusServer

_ns_counter = itertools.count(1)
_build_error: MissingBinaryError | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing control-plane binaries once, before any test starts.

    Doing it here keeps a first-time build (several minutes) outside the
    per-test timeout. Only runs when a selected test uses ``kube_cluster``.
    """
    if session.config.option.collectonly:
        return
    uses = {f for item in session.items for f in getattr(item, "fixturenames", ())}
    if not {"kube_cluster", "node_cluster"} & uses:
        return
    names = ["etcd", "kube-apiserver", "kube-controller-manager"]
    if "node_cluster" in uses:
        names += [*NODE_BINARIES, "helm"]
    if missing(names):
        try:
            ensure_binaries(names)
        except MissingBinaryError as e:
            # Reported as a failure by the kube_cluster fixture (without retrying the build).
            global _build_error
            _build_error = e
            print(f"\n[tierguard test infra] {e}")


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """etcd + kube-apiserver (+ kube-controller-manager when built) for the whole session."""
    if _build_error is not None:
        pytest.fail(f"building the control-plane binaries failed: {_build_error}", pytrace=False)
    try:
        cluster = KubeCluster(controller_manager=None).start()
    except MissingBinaryError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield cluster
    finally:
        died = [p for p in cluster.processes if not p.alive()]
        if died:
            print(
                "\n[tierguard test infra] control-plane component(s) died during the session:\n"
                + cluster.logs()
            )
        cluster.stop()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> str:
    """A new, uniquely named namespace (not deleted afterwards: without a
    controller manager namespaces never finish terminating)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t{next(_ns_counter)}-{base}".rstrip("-")
    kube_cluster.create_namespace(name, exist_ok=False)
    return name


def _unavailable(reason: str) -> None:
    """Fail under CI (the suite must run there), skip with the reason elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """A real single-node cluster (kubelet, containerd, kube-proxy, scheduler, control plane) with
    the project's image built from the Dockerfile, for the whole session (~15 s to start with
    cached images; the first image build takes ~3 min)."""
    if _build_error is not None:
        pytest.fail(f"building the cluster binaries failed: {_build_error}", pytrace=False)
    problem = host_problem()
    if problem:
        _unavailable(f"no single-node cluster on this host: {problem}")
    try:
        images = ensure_images()
    except ImageBuildError as e:
        pytest.fail(f"building the node images failed: {e}", pytrace=False)
    node = NodeCluster(images=images)
    try:
        node.start()
    except NodeUnavailable as e:
        _unavailable(str(e))
    except MissingBinaryError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield node
    finally:
        node.stop()


PrometheusFactory = Callable[..., PrometheusServer]


def _factory() -> tuple[PrometheusFactory, list[PrometheusServer]]:
    made: list[PrometheusServer] = []

    def make(targets: Any = (), **kwargs: Any) -> PrometheusServer:
        try:
            server = PrometheusServer(targets, **kwargs)
        except MissingBinaryError as e:
            pytest.fail(str(e), pytrace=False)
        made.append(server)
        return server.start()

    return make, made


@pytest.fixture
def prometheus_factory() -> Iterator[PrometheusFactory]:
    """``make(targets=(), **PrometheusServer kwargs)`` -> started server, stopped after the test."""
    make, made = _factory()
    yield make
    for s in reversed(made):
        s.stop()


@pytest.fixture(scope="session")
def prometheus_session_factory() -> Iterator[PrometheusFactory]:
    """Like ``prometheus_factory`` but servers live until the end of the session."""
    make, made = _factory()
    yield make
    for s in reversed(made):
        s.stop()


@pytest.fixture
def prometheus_server(prometheus_factory: PrometheusFactory) -> PrometheusServer:
    """A started Prometheus (scrape_interval 1s) with no targets; use ``set_targets``."""
    return prometheus_factory()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach control-plane / Prometheus log tails to the report of a failing test."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        cluster = funcargs.get("kube_cluster")
        if isinstance(cluster, KubeCluster):
            report.sections.append(("kube cluster logs (tail)", cluster.logs(40)))
        for value in funcargs.values():
            if isinstance(value, PrometheusServer):
                report.sections.append(("prometheus log (tail)", value.logs(40)))
    return report


__all__ = [
    "is_current",
    "kube_cluster",
    "kube_namespace",
    "node_cluster",
    "prometheus_factory",
    "prometheus_server",
    "prometheus_session_factory",
]
