"""Confidence drift in the proxy: the ``tierguard_confidence_psi`` gauge.

Pure tests of the per-(revision, tier) monitor with a real prometheus_client gauge and a
hand-driven clock, then real ``tierguard calibrate``, ``tierguard sim`` and ``tierguard proxy``
processes: a calibrated reference, traffic like the calibration data (PSI small), then a slice
of prompts whose recorded confidences are very different (PSI above 0.25), read from /metrics.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from needs import prometheus, shared_data
from procs import REPO, start_proxy, start_sim, write_outcomes
from tierguard import metric_names
from tierguard.drift import CONFIDENCE_EDGES, histogram, psi, reference_fractions
from tierguard.errors import UserError
from tierguard.policy import Revision, parse_policy_spec
from tierguard.proxy.drift_monitor import DriftMonitor, DriftSettings

PSI = metric_names.CONFIDENCE_PSI

# --- the monitor, pure ---------------------------------------------------------------------------

REF_VALUES = [0.6] * 30 + [0.85] * 40 + [0.96] * 30


def revision(reference: list[float] | None = None, mode: str = "cascade", threshold: float = 0.8) -> Revision:
    conf: dict[str, object] = {"threshold": threshold}
    if reference is not None:
        conf["reference"] = reference
    spec = parse_policy_spec(
        {
            "tiers": [
                {"name": "cheap", "baseUrl": "http://127.0.0.1:1/v1", "model": "c", "confidence": conf},
                {"name": "big", "baseUrl": "http://127.0.0.1:2/v1", "model": "b"},
            ]
        }
    )
    return Revision.of(spec.cascade(), mode)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(window: int = 10, step: int = 5, interval: float = 60.0) -> tuple[DriftMonitor, Gauge, Clock]:
    registry = CollectorRegistry()
    gauge = Gauge(PSI, "test", ["policy", "revision", "tier"], registry=registry)
    clock = Clock()
    return DriftMonitor(gauge, DriftSettings(window, step, interval), clock), gauge, clock


def exported(gauge: Gauge) -> dict[tuple[str, ...], float]:
    out = {}
    for fam in gauge.collect():
        for s in fam.samples:
            out[(s.labels["policy"], s.labels["revision"], s.labels["tier"])] = s.value
    return out


def test_nothing_is_exported_until_the_window_is_full():
    mon, gauge, _ = monitor(window=10, step=5)
    rev = revision(reference_fractions(REF_VALUES))
    for _ in range(9):
        assert mon.observe("p", rev, 0, 0.85) is None
    assert exported(gauge) == {}
    value = mon.observe("p", rev, 0, 0.85)
    assert value is not None
    expected = psi(reference_fractions(REF_VALUES), histogram([0.85] * 10, CONFIDENCE_EDGES))
    assert value == pytest.approx(expected)
    assert exported(gauge) == {("p", rev.name, "cheap"): pytest.approx(expected)}
    assert mon.value(rev.name, 0) == pytest.approx(expected)


def test_the_gauge_moves_every_step_answers_or_after_the_interval():
    mon, gauge, clock = monitor(window=10, step=5, interval=30.0)
    rev = revision(reference_fractions(REF_VALUES))
    values = [0.6, 0.85, 0.96, 0.85, 0.6, 0.85, 0.96, 0.85, 0.6, 0.85]
    for v in values:
        mon.observe("p", rev, 0, v)
    first = exported(gauge)[("p", rev.name, "cheap")]
    assert first == pytest.approx(psi(reference_fractions(REF_VALUES), histogram(values, CONFIDENCE_EDGES)))
    for _ in range(4):  # fewer than step new answers, within the interval: unchanged
        assert mon.observe("p", rev, 0, 0.1) is None
    assert exported(gauge)[("p", rev.name, "cheap")] == first
    assert mon.observe("p", rev, 0, 0.1) is not None  # the 5th
    window = [*values[5:], 0.1, 0.1, 0.1, 0.1, 0.1]
    assert exported(gauge)[("p", rev.name, "cheap")] == pytest.approx(
        psi(reference_fractions(REF_VALUES), histogram(window, CONFIDENCE_EDGES))
    )
    assert mon.observe("p", rev, 0, 0.1) is None
    clock.now += 30.0  # the interval passed: the next answer updates it
    assert mon.observe("p", rev, 0, 0.1) is not None


def test_tiers_without_reference_and_capable_only_revisions_are_not_watched():
    mon, gauge, _ = monitor(window=2, step=1)
    plain = revision(None)
    capable = revision(reference_fractions(REF_VALUES), mode="capable-only")
    for _ in range(5):
        mon.observe("p", plain, 0, 0.5)
        mon.observe("p", plain, 1, 0.5)  # the last tier has no reference either
        mon.observe("p", capable, 0, 0.5)
    assert exported(gauge) == {}


def test_revisions_no_longer_served_lose_their_series_and_window():
    mon, gauge, _ = monitor(window=2, step=1)
    a = revision(reference_fractions(REF_VALUES), threshold=0.8)
    b = revision(reference_fractions(REF_VALUES), threshold=0.9)
    assert a.name != b.name
    for _ in range(2):
        mon.observe("p", a, 0, 0.85)
        mon.observe("p", b, 0, 0.85)
    assert set(exported(gauge)) == {("p", a.name, "cheap"), ("p", b.name, "cheap")}
    mon.retain([b.name])
    assert set(exported(gauge)) == {("p", b.name, "cheap")}
    assert mon.observe("p", a, 0, 0.85) is None  # back again: starts from an empty window


def test_a_reloaded_identical_revision_keeps_its_window_and_a_new_reference_resets_it():
    mon, gauge, _ = monitor(window=3, step=1)
    ref = reference_fractions(REF_VALUES)
    rev = revision(ref)
    mon.observe("p", rev, 0, 0.85)
    mon.observe("p", rev, 0, 0.85)
    again = revision(list(ref))  # same content, new objects (as after a config reload)
    assert again.name == rev.name
    assert mon.observe("p", again, 0, 0.85) is not None  # the third answer fills the window
    # a hand-written config may reuse a revision name with another reference: start over
    changed = Revision(name=rev.name, cascade=revision(reference_fractions([0.1, 0.2])).cascade)
    assert mon.observe("p", changed, 0, 0.85) is None
    assert exported(gauge) == {}


def test_settings_from_the_environment():
    assert DriftSettings.from_env({}) == DriftSettings(500, 50, 10.0)
    s = DriftSettings.from_env(
        {"TIERGUARD_PSI_WINDOW": "200", "TIERGUARD_PSI_STEP": "20", "TIERGUARD_PSI_INTERVAL": "2.5"}
    )
    assert s == DriftSettings(200, 20, 2.5)
    for env, msg in [
        ({"TIERGUARD_PSI_WINDOW": "0"}, "TIERGUARD_PSI_WINDOW='0': expected a positive whole number"),
        ({"TIERGUARD_PSI_STEP": "ten"}, "TIERGUARD_PSI_STEP='ten'"),
        ({"TIERGUARD_PSI_INTERVAL": "-1"}, "TIERGUARD_PSI_INTERVAL='-1': expected a positive number"),
        ({"TIERGUARD_PSI_INTERVAL": "nan"}, "TIERGUARD_PSI_INTERVAL='nan'"),
    ]:
        with pytest.raises(UserError, match=msg):
            DriftSettings.from_env(env)


# --- real processes ------------------------------------------------------------------------------

TIERS = ("cheap", "big")


def outcome_row(qid: str, split: str, cheap_conf: float, cheap_correct: bool) -> dict:
    return {
        "qid": qid,
        "user_prompt": f"question {qid}",
        "benchmark": "unit",
        "split": split,
        "models": {
            "cheap": {
                "answer": "A",
                "correct": cheap_correct,
                "conf_logprob": math.log(cheap_conf),
                "latency_ms": 1.0,
                "tokens_in": 10,
                "tokens_out": 1,
                "cost_usd": 1e-6,
            },
            "big": {
                "answer": "A",
                "correct": True,
                "conf_logprob": math.log(0.9),
                "latency_ms": 1.0,
                "tokens_in": 10,
                "tokens_out": 1,
                "cost_usd": 1e-5,
            },
        },
    }


def synthetic_rows() -> list[dict]:
    """Calibration rows (train), live rows like them (test), and a shifted slice (shift).

    The cheap tier's raw confidence is spread over 0.3-0.99 and right with that probability; the
    shifted prompts are ones it answers with confidence 0.02-0.2 (a new kind of question).
    """
    rng = random.Random(11)
    rows = []
    for split, n in (("train", 600), ("test", 300)):
        for i in range(n):
            c = 0.3 + 0.69 * rng.random()
            rows.append(outcome_row(f"{split}-{i}", split, c, rng.random() < c))
    for i in range(300):
        rows.append(outcome_row(f"shift-{i}", "shift", 0.02 + 0.18 * rng.random(), rng.random() < 0.1))
    return rows


def tierguard(*args: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tierguard", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def psi_series(proxy_base: str) -> dict[tuple[str, str], float]:
    """(revision, tier) -> value of every tierguard_confidence_psi series on /metrics."""
    out = {}
    for line in httpx.get(f"{proxy_base}/metrics").text.splitlines():
        if line.startswith(PSI + "{"):
            series, value = line.rsplit(" ", 1)
            labels = dict(
                part.split("=", 1) for part in series[len(PSI) + 1 : -1].replace('"', "").split(",")
            )
            out[(labels["revision"], labels["tier"])] = float(value)
    return out


def send_all(proxy_base: str, bodies: list[dict]) -> list[httpx.Response]:
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: client.post(f"{proxy_base}/v1/chat/completions", json=b), bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return responses


def user(prompt: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"model": "any", "messages": [*messages, {"role": "user", "content": prompt}]}


def source_policy(path: Path, urls: dict[str, str], models: dict[str, str] | None = None) -> Path:
    models = models or {t: t for t in urls}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tierguard.io/v1alpha1",
                "kind": "CascadePolicy",
                "metadata": {"name": "drift", "namespace": "ns"},
                "spec": {
                    "tiers": [{"name": t, "baseUrl": u, "model": models[t]} for t, u in urls.items()],
                    "confidence": {"method": "logprob", "aggregate": "quantile", "quantile": 0.1},
                },
            }
        )
    )
    return path


def wait_for_revision_change(proxy_base: str, old: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stable = httpx.get(f"{proxy_base}/readyz").json()["stable"]
        if stable != old:
            return str(stable)
        time.sleep(0.1)
    raise AssertionError("the proxy did not apply the new policy")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """Sims serving the synthetic rows and the policy `tierguard calibrate` wrote from the train rows."""
    d = tmp_path_factory.mktemp("drift")
    rows = synthetic_rows()
    data = write_outcomes(d / "outcomes.jsonl", rows)
    sims = {t: start_sim(data, t, latency_scale=0) for t in TIERS}
    try:
        src = source_policy(d / "policy.yaml", {t: sims[t].url for t in TIERS})
        out = d / "calibrated.yaml"
        proc = tierguard(
            "calibrate", "--data", data, "--policy", src, "--split", "train", "--out", out,
            "--target-cost", "0.6",
        )  # fmt: skip  (a cost budget, not a certificate: the drift reference is what is tested here)
        traffic = {s: [user(r["user_prompt"]) for r in rows if r["split"] == s] for s in ("test", "shift")}
        yield out, proc.stdout, traffic
    finally:
        for sim in sims.values():
            sim.stop()


PROXY_ENV = {"TIERGUARD_PSI_WINDOW": "300", "TIERGUARD_PSI_STEP": "50", "TIERGUARD_PSI_INTERVAL": "3600"}


def test_psi_stays_low_on_familiar_traffic_and_rises_on_a_shifted_slice(calibrated, tmp_path):
    source, stdout, traffic = calibrated
    assert "drift references (tierguard_confidence_psi): cheap (600 rows)" in stdout
    reference = yaml.safe_load(source.read_text())["spec"]["tiers"][0]["confidence"]["reference"]
    assert len(reference) == len(CONFIDENCE_EDGES) + 1 and sum(reference) == pytest.approx(1.0)
    policy = tmp_path / "policy.yaml"
    policy.write_text(source.read_text())

    with start_proxy(policy, env=PROXY_ENV, decision_log="off", reload_interval=0.2) as proxy:
        send_all(proxy.base, traffic["test"][:299])
        assert psi_series(proxy.base) == {}  # a partial window exports nothing
        send_all(proxy.base, traffic["test"][299:])
        series = psi_series(proxy.base)
        revision_name = httpx.get(f"{proxy.base}/readyz").json()["stable"]
        assert set(series) <= {(revision_name, "cheap"), (revision_name, "big")}
        familiar = series[(revision_name, "cheap")]
        assert familiar < 0.1

        send_all(proxy.base, traffic["shift"])
        shifted = psi_series(proxy.base)[(revision_name, "cheap")]
        assert shifted > 0.25
        print(f"\ncheap tier PSI: familiar traffic {familiar:.4f}, shifted slice {shifted:.4f}")

        # a new revision (here: another threshold) replaces the old one's series
        changed = yaml.safe_load(policy.read_text())
        changed["spec"]["tiers"][0]["confidence"]["threshold"] = 0.99
        tmp = tmp_path / "next.yaml"
        tmp.write_text(yaml.safe_dump(changed))
        os.replace(tmp, policy)
        wait_for_revision_change(proxy.base, revision_name)
        assert psi_series(proxy.base) == {}


@pytest.mark.prometheus
def test_confidence_drift_objective_passes_then_breaches_through_prometheus(calibrated):
    """The QualitySLO signal `confidence_drift` against a real Prometheus scraping the real proxy:
    PASS on familiar traffic, BREACH after the shifted slice (it used to be NO_DATA: nothing
    exported the gauge)."""
    from datetime import UTC, datetime

    from tierguard.localenv.prometheus import PrometheusServer
    from tierguard.metrics.prometheus import PrometheusProvider
    from tierguard.policy import QualitySLOSpec, SLORef, load_policy_spec, load_proxy_config
    from tierguard.rollout.analysis import observe
    from tierguard.rollout.observations import Verdict
    from tierguard.rollout.status import PolicyStatus

    prometheus()
    source, _, traffic = calibrated
    namespace = "ns"
    name, spec = load_policy_spec(source)
    rev = load_proxy_config(source).stable
    spec = spec.model_copy(
        update={
            "rollout": spec.rollout.model_copy(update={"interval": "30s", "min_samples": 0}),
            "slos": [SLORef(name="drift")],
        }
    )
    slos = {
        "drift": QualitySLOSpec.model_validate(
            {
                "objectives": [
                    {"name": "cheap-drift", "tier": "cheap", "signal": "confidence_drift", "max": 0.25}
                ]
            }
        )
    }
    status = PolicyStatus(
        phase="Progressing",
        stable=rev,
        stable_revision=rev.name,
        canary=rev,
        canary_revision=rev.name,
        canary_weight=100,
        step_started_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    series = f'{PSI}{{namespace="{namespace}",revision="{rev.name}",tier="cheap"}}'

    def drift_check():
        obs = observe(name, namespace, spec, status, slos, PrometheusProvider(prom.url))
        assert obs.provider_error is None
        (check,) = [c for c in obs.checks if c.objective == "cheap-drift"]
        return check

    with (
        start_proxy(source, env=PROXY_ENV, decision_log="off") as proxy,
        PrometheusServer(targets=[(f"127.0.0.1:{proxy.port}", {"namespace": namespace})]) as prom,
    ):
        assert drift_check().verdict is Verdict.NO_DATA  # nothing exported yet: a partial window
        send_all(proxy.base, traffic["test"])
        prom.wait_for_value(series, lambda v: v >= 0, timeout=30)
        check = drift_check()
        assert check.verdict is Verdict.PASS and check.value is not None and check.value < 0.1
        send_all(proxy.base, traffic["shift"])
        prom.wait_for_value(series, lambda v: v > 0.25, timeout=30)
        check = drift_check()
        assert check.verdict is Verdict.BREACH and check.value is not None and check.value > 0.25
        assert check.bound == 0.25


def test_psi_on_recorded_mmlu_traffic_then_gsm8k(tmp_path):
    """Calibrated on MMLU train; MMLU test traffic is familiar, GSM8K questions are not."""
    shared = shared_data()
    import json

    models = {"mini": "gpt-4o-mini", "capable": "gpt-4o"}
    sims = {t: start_sim(shared, m, latency_scale=0) for t, m in models.items()}
    try:
        src = source_policy(tmp_path / "policy.yaml", {t: sims[t].url for t in models}, models)
        calibrated = tmp_path / "calibrated.yaml"
        tierguard(
            "calibrate", "--data", shared, "--policy", src, "--benchmark", "mmlu", "--split", "train",
            "--out", calibrated, "--target-cost", "0.7",
        )  # fmt: skip  (both tiers kept: on MMLU train alone nothing cheaper certifies at 1 point)
        with shared.open(encoding="utf-8") as fh:  # prompts hold U+2028: not str.splitlines()
            recs = [json.loads(x) for x in fh if x.strip()]
        mmlu = [
            user(r["user_prompt"], r["system_prompt"])
            for r in recs
            if r["benchmark"] == "mmlu" and r["split"] == "test"
        ][:600]
        gsm8k = [user(r["user_prompt"], r["system_prompt"]) for r in recs if r["benchmark"] == "gsm8k"]
        env = {"TIERGUARD_PSI_WINDOW": "200", "TIERGUARD_PSI_STEP": "10", "TIERGUARD_PSI_INTERVAL": "3600"}
        with start_proxy(calibrated, env=env, decision_log="off") as proxy:
            rev = httpx.get(f"{proxy.base}/readyz").json()["stable"]
            send_all(proxy.base, mmlu)
            familiar = psi_series(proxy.base)
            send_all(proxy.base, gsm8k)
            shifted = psi_series(proxy.base)
        print(f"\nMMLU test: {familiar}\nthen GSM8K: {shifted}")
        assert familiar[(rev, "mini")] < 0.1 and familiar[(rev, "capable")] < 0.1
        assert shifted[(rev, "capable")] > 0.25
    finally:
        for s in sims.values():
            s.stop()
