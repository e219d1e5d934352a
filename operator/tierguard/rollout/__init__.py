"""Rollout core: status model, observations, the pure decision, SLO queries and analysis.

Nothing in this package talks to Kubernetes; :mod:`.analysis` talks to a metrics provider only
through the :class:`tierguard.metrics.provider.MetricsProvider` port.
"""
