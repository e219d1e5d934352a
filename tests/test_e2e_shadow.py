"""End to end: the operator raises a low-traffic canary's shadow rate within the shadow budget and
returns it to the base rate after promotion.

The same moving parts as tests/test_e2e_rollout.py (its module fixture, a cluster of its own):
a real kube-apiserver, the operator process, a real Prometheus scraping two real proxies on the
ConfigMap the operator renders, and two simulators. At a 20% canary of 50 requests/s the cheap
tier's accepted answers give far fewer than ``minSamples`` shadow samples per 4 s interval at the
base rate 0.02; the test checks that the operator raises the canary's rate (status, ConfigMap, the
proxies' ``tierguard_shadow_rate``), that the proxies' shadow sample counter then rises at about
that rate, and that after promotion every revision is back at the base rate.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from typing import Any

import pytest

from test_e2e_rollout import E2E, NS, Endpoint, e2e, env  # noqa: F401  (the module's fixtures)
from test_operator_k8s import cli, config_of, merge_patch, policies_path, status_of, until

pytest_plugins = ["infra.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.prometheus]

BASE_RATE = 0.02
MIN_SAMPLES = 5


def metric_sum(proxies: list[Endpoint], name: str, **labels: str) -> float:
    """The sum over the proxies of every sample of ``name`` carrying ``labels``."""
    total = 0.0
    for proxy in proxies:
        with urllib.request.urlopen(f"{proxy.base}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def shadow_policy(rig: E2E, name: str) -> dict[str, Any]:
    manifest = rig.policy(name, steps=[{"weight": 20, "pause": "indefinite"}, {"weight": 100}])
    spec = manifest["spec"]
    spec["rollout"]["minSamples"] = MIN_SAMPLES
    for tier, (p_in, p_out) in zip(spec["tiers"], ((0.15, 0.6), (2.5, 10.0)), strict=True):
        tier["priceInputPerMillion"], tier["priceOutputPerMillion"] = p_in, p_out
    spec["proxy"].update({"shadowRate": BASE_RATE, "shadowBudget": {"maxSpendPerHour": 50.0, "maxRate": 1.0}})
    return manifest


def test_a_low_traffic_canary_gets_its_shadow_rate_raised_then_back_to_base(env: E2E) -> None:  # noqa: F811
    rig = env
    name = "shadow"
    proxies, _sync, load, _log = rig.launch(shadow_policy(rig, name))

    def diag() -> str:
        return json.dumps(status_of(rig.cluster, NS, name), indent=1)[-3000:] + "\n" + rig.operator.tail()

    # 1. the operator raises the canary's rate for the samples, within the budget
    st = until(
        lambda: (
            (s := status_of(rig.cluster, NS, name)).get("shadow", {}).get("reason") == "RaisedForSamples"
            and s
        ),
        60,
        "a raised shadow rate in the status",
        diag,
    )
    shadow, canary = st["shadow"], st["canaryRevision"]
    assert st["phase"] == "Paused" and st["canaryWeight"] == 20
    assert shadow["revision"] == canary and shadow["baseRate"] == BASE_RATE
    assert shadow["rate"] >= 5 * BASE_RATE, shadow
    assert 0.0 < shadow["expectedSpendPerHour"] <= 50.0 and shadow["maxSpendPerHour"] == 50.0
    assert f"(of {MIN_SAMPLES})" in shadow["message"]

    # 2. the ConfigMap carries it for the canary only, and the proxies apply it
    def applied() -> float | None:
        config = config_of(rig.cluster, NS, name)
        if config is None or canary not in config.shadow_rates:
            return None
        rate = config.shadow_rates[canary]
        gauge = metric_sum(proxies, "tierguard_shadow_rate", policy=name, revision=canary)
        return rate if math.isclose(gauge, 2 * rate) else None

    rate = until(applied, 30, "the canary's rate in the ConfigMap and both proxies", diag)
    config = config_of(rig.cluster, NS, name)
    assert config is not None and config.shadow_rate_for(config.stable.name) == BASE_RATE
    assert metric_sum(proxies, "tierguard_shadow_rate", policy=name, revision=config.stable.name) == 0.0

    # 3. the shadow calls follow the rate: samples per accepted cheap answer of the canary
    def counts() -> tuple[float, float]:
        shadows = metric_sum(proxies, "tierguard_shadow_samples_total", revision=canary, tier="mini")
        accepted = metric_sum(proxies, "tierguard_requests_total", revision=canary, tier="mini", status="ok")
        return shadows, accepted

    s0, a0 = counts()
    time.sleep(12.0)  # three analysis intervals
    s1, a1 = counts()
    current = status_of(rig.cluster, NS, name)["shadow"]["rate"]
    accepted, sampled = a1 - a0, s1 - s0
    assert accepted > 0, "no accepted canary answers"
    share = sampled / accepted
    # the rate may be re-chosen in between: any of the two, within four binomial standard deviations
    lo, hi = min(rate, current), max(rate, current)
    sd = math.sqrt(hi * (1 - hi) / accepted) if hi < 1 else 0.0
    assert lo - 4 * sd - 0.02 <= share <= hi + 4 * sd + 0.02, (share, rate, current, accepted)
    per_interval = sampled / 3
    assert per_interval >= MIN_SAMPLES * 0.6, (per_interval, rate, accepted)
    at_base = BASE_RATE * accepted / 3
    print(
        f"\nshadow rate {BASE_RATE} -> {rate} ({shadow['reason']}: {shadow['message']}); over 12 s the "
        f"canary's mini tier accepted {accepted:.0f} answers and {sampled:.0f} were shadowed "
        f"({per_interval:.1f} per 4 s interval, {at_base:.1f} at the base rate; "
        f"expected spend {shadow['expectedSpendPerHour']:.4f} USD/h); load {load.ok} ok"
    )

    # 4. a budget of half that spend caps the rate (a spec change, no new revision)
    raised = status_of(rig.cluster, NS, name)["shadow"]
    budget = raised["expectedSpendPerHour"] / 2
    merge_patch(
        rig.cluster,
        policies_path(NS, name),
        {"spec": {"proxy": {"shadowBudget": {"maxSpendPerHour": budget}}}},
    )
    capped = until(
        lambda: (sh := status_of(rig.cluster, NS, name)["shadow"])["reason"] == "CappedByBudget" and sh,
        30,
        "the rate capped by the smaller budget",
        diag,
    )
    assert capped["maxSpendPerHour"] == pytest.approx(budget)
    assert BASE_RATE < capped["rate"] < raised["rate"] and capped["expectedSpendPerHour"] <= budget, capped
    assert status_of(rig.cluster, NS, name)["canaryRevision"] == canary  # the same rollout goes on
    until(
        lambda: (
            (c := config_of(rig.cluster, NS, name)) is not None
            and c.shadow_rates.get(canary) == capped["rate"]
        ),
        30,
        "the capped rate in the ConfigMap",
        diag,
    )
    print(f"budget {budget:.4f} USD/h: rate {capped['rate']} ({capped['message']})")

    # 5. after promotion every revision is back at the base rate
    res = cli("promote", name, "-n", NS, "--wait", "30", kubeconfig=rig.cluster.kubeconfig)
    assert res.returncode == 0, res.stderr
    st = until(
        lambda: (s := status_of(rig.cluster, NS, name)).get("phase") == "Succeeded" and s,
        60,
        "the promotion",
        diag,
    )
    assert st["shadow"]["reason"] == "Base" and st["shadow"]["rate"] == BASE_RATE
    assert "revision" not in st["shadow"]

    def back_to_base() -> bool:
        config = config_of(rig.cluster, NS, name)
        if config is None or config.canary is not None or config.shadow_rates:
            return False
        gauge = metric_sum(proxies, "tierguard_shadow_rate", policy=name, revision=config.stable.name)
        return math.isclose(gauge, 2 * BASE_RATE)

    until(back_to_base, 30, "the base rate in the ConfigMap and both proxies", diag)
