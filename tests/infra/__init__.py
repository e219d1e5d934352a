"""Pytest fixtures for the real-component test infrastructure.

The components themselves (etcd + kube-apiserver, Prometheus, process supervision, ports) live in
the product package, :mod:`tierguard.localenv`, because ``tierguard demo`` runs them too::

    from tierguard.localenv.kube import KubeCluster
    from tierguard.localenv.prometheus import PrometheusServer
    from tierguard.localenv.ports import free_port

Pytest fixtures live in :mod:`infra.fixtures` (``pytest_plugins = ["infra.fixtures"]``).
"""
