"""Test infrastructure: real etcd + kube-apiserver (+ kube-controller-manager) and
a real Prometheus server, started as local processes for integration tests.

Import from the repo's ``tests`` directory on ``sys.path`` (pytest's
``pythonpath = ["tests", "operator"]``)::

    from infra.kube import KubeCluster
    from infra.prometheus import PrometheusServer
    from infra.ports import free_port

Pytest fixtures live in :mod:`infra.fixtures` (``pytest_plugins = ["infra.fixtures"]``).
"""

from infra.ports import free_port

__all__ = ["free_port"]
