"""Control-plane faults on real components: what the operator does when Prometheus is slow, when
the API server fails a write, when it is killed between its status write and its ConfigMap apply,
and when a proxy has not loaded the config of the current step yet.

    operator --(plain HTTP)--> FaultProxy --(TLS)--> kube-apiserver + etcd
        \\--(queries)--------> FaultProxy ---------> Prometheus (1 s scrapes) --> 2 x tierguard proxy
                                                                                    --> tierguard sim x 2

The fault proxies (``tests/infra/faultproxy.py``) forward everything to the real servers except
what a test's rule faults: a delay, a 5xx instead of the answer (the write did not happen), a 5xx
after forwarding (it happened, the answer was lost), or a request held without an answer. The
rollouts run as in ``test_e2e_rollout.py`` (``interval: 4s``, ``failureThreshold: 2``,
``minSamples: 5``, steps 5 -> 10 -> 25 -> 50 -> 100) under 50 requests/s; the operator runs with
``--prometheus-timeout 1``. Measured times are printed and quoted in docs/operator.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.faultproxy import FaultProxy, Rule, kubeconfig_via
from procs import RunningProcess, start_proxy, start_sim
from test_e2e_rollout import E2E, NS, _data, proxy_config_hash, run_cleanups
from test_operator_k8s import (
    OperatorProcess,
    condition,
    config_of,
    events_of,
    get,
    install_chart_rbac,
    install_crds,
    policies_path,
    slo_manifest,
    slos_path,
    status_of,
    until,
)
from tierguard.demo.traffic import ConfigSync, Load, StatusLog
from tierguard.localenv.kube import KubeCluster

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.prometheus]

INTERVAL_S = 4.0
PROM_TIMEOUT = 1.0
WALK = [5, 10, 25, 50, 100]


class Faults(E2E):
    api: FaultProxy
    prom: FaultProxy


@pytest.fixture(scope="module")
def faults(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory, prometheus_session_factory: Any
) -> Iterator[Faults]:
    tmp = tmp_path_factory.mktemp("faults")
    cleanups: list[Any] = []
    try:
        install_crds(kube_cluster)
        kubeconfig = install_chart_rbac(kube_cluster, NS)
        kube_cluster.create(slos_path(NS), slo_manifest("quality", NS))
        data = _data(tmp)
        sims = {
            "cheap": start_sim(data.path, data.cheap, latency_scale=0, log_dir=tmp),
            "capable": start_sim(data.path, data.capable, latency_scale=0, log_dir=tmp),
        }
        cleanups += [s.stop for s in sims.values()]
        prometheus = prometheus_session_factory(scrape_interval="1s")
        prom = FaultProxy(prometheus.url).start()
        api = FaultProxy(kube_cluster.server, ca_file=kube_cluster.ca_file).start()
        cleanups += [prom.stop, api.stop]
        via = kubeconfig_via(kubeconfig, api, tmp / "via-fault-proxy.kubeconfig")
        operator = OperatorProcess(
            via, NS, tmp, prometheus_url=prom.url, extra_args=("--prometheus-timeout", f"{PROM_TIMEOUT:g}")
        ).start()
        cleanups.append(operator.stop)
        env = Faults(kube_cluster, operator, prometheus, data, sims, tmp, tmp / "no-audit.log", "")
        env.api, env.prom = api, prom
        yield env
    finally:
        for fn in reversed(cleanups):
            with contextlib.suppress(Exception):
                fn()


@pytest.fixture
def env(faults: Faults) -> Iterator[Faults]:
    try:
        yield faults
    finally:
        faults.api.clear()
        faults.prom.clear()
        run_cleanups(faults.cleanups)
        if faults.operator.proc is None or not faults.operator.proc.alive():
            faults.operator.start()


def _status_diag(env: E2E, name: str) -> Any:
    return lambda: json.dumps(status_of(env.cluster, NS, name), indent=1)[-2500:] + "\n" + env.operator.tail()


def _reasons(env: E2E, name: str) -> list[str]:
    uid = get(env.cluster, policies_path(NS, name))["metadata"]["uid"]
    return [e["reason"] for e in events_of(env.cluster, NS, uid)]


def _succeeded(env: E2E, name: str, timeout: float = 120) -> dict[str, Any]:
    return until(
        lambda: (s := status_of(env.cluster, NS, name)).get("phase") == "Succeeded" and s,
        timeout,
        f"{name} to be promoted",
        _status_diag(env, name),
    )


def _weight(env: E2E, name: str) -> int:
    return int(status_of(env.cluster, NS, name).get("canaryWeight", 0))


def _configmap_weights(sync: ConfigSync) -> list[int]:
    """The canary weights the ConfigMap went through during the rollout (each one once), without
    the promoted config's 0."""
    weights = [w for _, w in sync.writes]
    return weights[:-1] if weights[-1:] == [0] else weights


def _configmap_weight(env: E2E, name: str) -> int | None:
    cfg = config_of(env.cluster, NS, name)
    return None if cfg is None else cfg.canary_weight


# --------------------------------------------------------------------------- Prometheus slow


def test_slow_prometheus_holds_with_provider_error_then_recovers(env: Faults) -> None:
    _, _, _, log = env.launch(env.policy("slowprom"))
    until(lambda: _weight(env, "slowprom") >= 10, 90, "weight 10", _status_diag(env, "slowprom"))
    slow = env.prom.add(Rule("*", r"/api/v1/query$", delay=3 * PROM_TIMEOUT, times=None))
    t0 = time.monotonic()
    st = until(
        lambda: (s := status_of(env.cluster, NS, "slowprom"))
        and condition(s, "Progressing").get("reason") == "ProviderError"
        and s,
        4 * INTERVAL_S,
        "a ProviderError hold",
        _status_diag(env, "slowprom"),
    )
    to_hold = time.monotonic() - t0
    weight, failed = st["canaryWeight"], st.get("failedChecks", 0)
    assert f"did not answer within {PROM_TIMEOUT:g}s" in condition(st, "Progressing")["message"], st

    # three more intervals of a slow Prometheus: nothing moves either way
    end = time.monotonic() + 3 * INTERVAL_S
    while time.monotonic() < end:
        st = status_of(env.cluster, NS, "slowprom")
        assert st["phase"] == "Progressing" and st["canaryWeight"] == weight, st
        assert st.get("failedChecks", 0) == failed, st
        time.sleep(0.5)
    assert condition(st, "Progressing")["reason"] == "ProviderError", st
    assert slow.hits >= 3  # the analyses kept asking (and timing out)

    env.prom.remove(slow)
    t1 = time.monotonic()
    until(lambda: _weight(env, "slowprom") > weight, 4 * INTERVAL_S, "the next step after recovery",
          _status_diag(env, "slowprom"))  # fmt: skip
    to_step = time.monotonic() - t1
    _succeeded(env, "slowprom")
    assert log.weights() == WALK, log.changes
    reasons = _reasons(env, "slowprom")
    assert "RolledBack" not in reasons and reasons.count("HoldProviderError") >= 1, reasons
    print(f"\nPrometheus {3 * PROM_TIMEOUT:g}s slow (query timeout {PROM_TIMEOUT:g}s): ProviderError hold "
          f"{to_hold:.1f}s after the slowdown, weight {weight} kept {3 * INTERVAL_S:g}s; the next step "
          f"{to_step:.1f}s after Prometheus was fast again")  # fmt: skip


# --------------------------------------------------------------------------- API server 5xx


def test_api_server_5xx_on_writes_are_retried_from_a_fresh_read(env: Faults) -> None:
    name = "apifault"
    _, sync, _, log = env.launch(env.policy(name))
    status = rf"/cascadepolicies/{name}/status$"
    cm = rf"/configmaps/{name}-proxy$"
    step = r'"canaryWeight"'  # a status write that moves the canary
    rules = [
        env.api.add(Rule("PATCH", status, body=step, status=503, times=1)),  # not stored
        env.api.add(Rule("PATCH", status, body=step, status=500, forward=True, times=1)),  # stored
        env.api.add(Rule("PATCH", cm, status=503, times=1)),  # ConfigMap not stored
        env.api.add(Rule("PATCH", cm, status=500, forward=True, times=1)),  # stored, answer lost
    ]
    t0 = time.monotonic()
    st = _succeeded(env, name)
    took = time.monotonic() - t0
    assert [r.hits for r in rules] == [1, 1, 1, 1], [r.log for r in rules]
    first_fault = rules[0].log[0][0]
    at_10 = next(t for t, w in sync.writes if w == 10)
    step_writes = [t for t, w in sync.writes]
    # each step exactly once: a step applied twice would skip a weight
    assert log.weights() == WALK, log.changes
    assert _configmap_weights(sync) == WALK, sync.writes
    reasons = _reasons(env, name)
    assert reasons.count("StepAdvanced") == 4 and reasons.count("Promoted") == 1, reasons
    assert st["failedChecks"] == 0 and "canaryRevision" not in st
    assert "analysis tick failed" in env.operator.log()
    print(f"\nAPI server 5xx on 2 step writes and 2 ConfigMap writes: ConfigMap at weight 10 "
          f"{at_10 - first_fault:.1f}s after the first 5xx; promoted {took:.1f}s after the faults "
          f"were armed; ConfigMap writes {[round(t - step_writes[0], 1) for t in step_writes]} s")  # fmt: skip


# --------------------------------------------------------------------------- killed mid-step


def test_killed_between_status_write_and_configmap_apply_takes_the_step_once(env: Faults) -> None:
    name = "killed"
    _, sync, _, log = env.launch(env.policy(name))
    until(lambda: _configmap_weight(env, name) == 5, 30, "ConfigMap at weight 5")
    held = env.api.add(Rule("PATCH", rf"/configmaps/{name}-proxy$", hang=True, times=1))
    until(lambda: _weight(env, name) == 10, 60, "the status at weight 10", _status_diag(env, name))
    until(lambda: held.hits == 1, 10, "the ConfigMap write to be held")
    # the status says 10, the ConfigMap still 5: the operator dies here
    assert _configmap_weight(env, name) == 5
    # the Event follows the status write, not the ConfigMap apply
    until(lambda: _reasons(env, name).count("StepAdvanced") == 1, 10, "the StepAdvanced Event")
    proc = env.operator.proc
    assert proc is not None and proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    env.api.remove(held)
    time.sleep(INTERVAL_S)  # longer than an interval: a restart must not see a due step twice
    assert _configmap_weight(env, name) == 5 and _weight(env, name) == 10

    t0 = time.monotonic()
    env.operator.start()
    until(lambda: _configmap_weight(env, name) == 10, 30, "the ConfigMap at the recorded weight",
          env.operator.tail)  # fmt: skip
    repaired = time.monotonic() - t0
    st = _succeeded(env, name)
    assert log.weights() == WALK, log.changes
    assert _configmap_weights(sync) == WALK, sync.writes
    reasons = _reasons(env, name)
    assert reasons.count("StepAdvanced") == 4 and reasons.count("Promoted") == 1, reasons
    assert st["failedChecks"] == 0
    print(f"\nkilled between the status write (weight 10) and the ConfigMap apply: ConfigMap at 10 "
          f"{repaired:.1f}s after the restart (including start-up); weights {log.weights()}")  # fmt: skip


# --------------------------------------------------------------------------- stale proxy


def test_analysis_waits_for_a_proxy_on_an_old_config(env: Faults) -> None:
    """Two proxies; the second reads its own copy of the config, refreshed only when the test says
    (a kubelet that has not synced the mounted ConfigMap yet)."""
    name = "stale"
    log = StatusLog(env.cluster, NS, name)
    log.start()
    env.cleanups.append(log.stop_event.set)
    env.cluster.create(policies_path(NS), env.policy(name))
    until(lambda: config_of(env.cluster, NS, name), 30, "the rendered ConfigMap", env.operator.tail)
    fresh, lagging = env.tmp / f"{name}.yaml", env.tmp / f"{name}-lagging.yaml"
    sync = ConfigSync(env.cluster, NS, name, fresh)
    sync.start()
    env.cleanups.append(sync.stop_event.set)
    until(lambda: fresh.is_file(), 10, "the config file")
    shutil.copy(fresh, lagging)
    proxies: list[RunningProcess] = []
    for path in (fresh, lagging):
        p = start_proxy(path, reload_interval=0.2, decision_log="off", log_dir=env.tmp)
        env.cleanups.append(p.stop)
        proxies.append(p)
    env.prometheus.set_targets([(f"{p.host}:{p.port}", {"namespace": NS}) for p in proxies])
    load = Load(proxies, env.data.prompts, 50.0)
    load.start()
    env.cleanups.append(load.stop_event.set)

    # step 5 -> 10 needs both proxies on the first config; then the lagging one stays behind
    until(lambda: _weight(env, name) == 10, 60, "weight 10", _status_diag(env, name))
    expected = status_of(env.cluster, NS, name)["configHash"]
    until(lambda: proxy_config_hash(proxies[0]) == expected, 10, "the fresh proxy on the new config")
    assert proxy_config_hash(proxies[1]) != expected
    st = until(
        lambda: (s := status_of(env.cluster, NS, name))
        and condition(s, "Progressing").get("reason") == "StaleConfig"
        and s,
        3 * INTERVAL_S,
        "a StaleConfig hold",
        _status_diag(env, name),
    )
    assert "50% of the proxies report the current config" in condition(st, "Progressing")["message"], st
    end = time.monotonic() + 3 * INTERVAL_S
    while time.monotonic() < end:
        st = status_of(env.cluster, NS, name)
        assert st["canaryWeight"] == 10 and st["phase"] == "Progressing", st
        time.sleep(0.5)
    assert condition(st, "Progressing")["reason"] == "StaleConfig"
    assert st["lastAnalysis"]["counted"] is False, st["lastAnalysis"]

    shutil.copy(fresh, lagging)  # the lagging proxy catches up
    t0 = time.monotonic()
    until(lambda: proxy_config_hash(proxies[1]) == expected, 10, "the lagging proxy on the new config")
    until(lambda: _weight(env, name) == 25, 4 * INTERVAL_S, "the next step", _status_diag(env, name))
    resumed = time.monotonic() - t0
    until(lambda: len(log.weights()) >= 3, 5, "the status log to see 25")  # it polls every 0.1 s
    assert log.weights()[:3] == [5, 10, 25], log.changes
    assert "HoldStaleConfig" in _reasons(env, name)
    print(f"\na proxy on the old config: StaleConfig hold for {3 * INTERVAL_S:g}s+, the next step "
          f"{resumed:.1f}s after it loaded the current config")  # fmt: skip
