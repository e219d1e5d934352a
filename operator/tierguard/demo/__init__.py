"""``tierguard demo``: a policy rollout and an automatic rollback, live, on one machine.

- :mod:`.workload`: the synthetic customer-support outcomes the demo's simulators serve (pure).
- :mod:`.story`: the three policy revisions and what must happen to each (pure).
- :mod:`.main`: the command; starts the control plane, Prometheus, the operator, proxies,
  simulators and load, and drives the story.
"""
