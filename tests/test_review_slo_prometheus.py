"""The review signals as rollout gates, end to end: real proxy and `tierguard sim` processes,
review sampling into a real SQLite store, labels written through `tierguard review serve`'s API,
outcome events posted to the proxy, a real Prometheus scraping the proxy and the reviewer's page,
and the operator's own ``observe()`` / ``decide()`` on the result.

``review_accuracy`` must read the page's inclusion-weighted accuracy per tier; ``outcome_rate``
the events per answered request (a tier that answered and had no event has rate 0, as a tier
without errors has error rate 0)."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from needs import prometheus
from procs import start_proxy, start_review, start_sim, write_outcomes
from test_proxy import MODELS, cascade, chat, row, write_policy
from test_proxy_review import KEY, wait_items
from tierguard.localenv.prometheus import PrometheusServer
from tierguard.metrics.prometheus import PrometheusProvider
from tierguard.policy import CascadePolicySpec, QualitySLOSpec, Revision
from tierguard.rollout.analysis import observe
from tierguard.rollout.decide import Rollback, decide
from tierguard.rollout.observations import Verdict
from tierguard.rollout.status import PolicyStatus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

NAMESPACE = "shop"
TOKEN = "dana-token-0123456789"
ROWS = [row("easy", "easy question", (0.95, 0.9, 0.9)), row("hard", "hard question", (0.3, 0.4, 0.9))]
CHEAP_LABELS = 20  # the cheap tier's sampled answers that get a label: 12 correct, 8 incorrect
HANDOFF_EVERY = 4  # a human_handoff event for every 4th cheap answer: outcome rate 0.25

SLO = QualitySLOSpec.model_validate(
    {
        "objectives": [
            {"name": "reviewed", "signal": "review_accuracy", "tier": "cheap", "min": 0.8},
            {"name": "reviewed-big", "signal": "review_accuracy", "tier": "big", "min": 0.8},
            {"name": "handoffs", "signal": "outcome_rate", "event": "human_handoff", "tier": "cheap",
             "max": 0.1},
            {"name": "handoffs-big", "signal": "outcome_rate", "event": "human_handoff", "tier": "big",
             "max": 0.1},
        ]
    }
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _prometheus_binary() -> None:
    prometheus()  # skips locally, fails in CI when the binary is missing


def _config_hash(proxy_base: str) -> str:
    text = httpx.get(f"{proxy_base}/metrics").text
    found = re.search(r'tierguard_config_info\{[^}]*config_hash="([^"]+)"', text)
    assert found, "the proxy exports no config hash"
    return found.group(1)


class Traffic:
    """Steady traffic: one easy (cheap tier) and one hard (big tier) question per tick, and a
    human_handoff event for every 4th cheap answer, so the counters Prometheus rates keep moving."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stop = threading.Event()
        self.cheap_answers = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.wait(0.1):
                for prompt in ("easy question", "hard question"):
                    r = client.post(f"{self.base}/v1/chat/completions", json=chat(prompt))
                    if r.status_code != 200:
                        self.errors.append(r.text)
                        continue
                    if r.headers["x-tierguard-tier"] != "cheap":
                        continue
                    self.cheap_answers += 1
                    if self.cheap_answers % HANDOFF_EVERY == 0:
                        ev = {"id": r.json()["id"], "event": "human_handoff"}
                        e = client.post(f"{self.base}/v1/outcomes", json=ev)
                        if e.status_code != 200:
                            self.errors.append(e.text)


def test_review_accuracy_and_outcome_rate_gate_a_rollout(tmp_path) -> None:
    data = write_outcomes(tmp_path / "o.jsonl", ROWS)
    sims = {m: start_sim(data, m, latency_scale=0) for m in MODELS}
    url = f"sqlite:{tmp_path / 'review.db'}"
    spec = cascade(sims)
    spec["proxy"] = {"review": {"rate": 1.0, "quotaPerHour": 1_000_000, "store": url}}
    policy = write_policy(tmp_path / "p.yaml", spec)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"dana:{TOKEN}\n")
    try:
        with start_proxy(policy, env=KEY, decision_log="off") as proxy:
            # labels first, through the reviewer's API: the cheap tier 12/20 right, the big tier all right
            for prompt in ["easy question"] * CHEAP_LABELS + ["hard question"] * 10:
                assert (
                    httpx.post(f"{proxy.base}/v1/chat/completions", json=chat(prompt), timeout=30).status_code
                    == 200
                )
            items = wait_items(url, CHEAP_LABELS + 10)
            with start_review(url, tokens, log_dir=tmp_path) as page:
                cheap = [it.item.id for it in items if it.item.tier == "cheap"]
                big = [it.item.id for it in items if it.item.tier == "big"]
                assert (len(cheap), len(big)) == (CHEAP_LABELS, 10)
                for i, item_id in enumerate(cheap + big):
                    label = "incorrect" if i < 8 else "correct"
                    r = httpx.post(f"{page.base}/api/labels", json={"item": item_id, "label": label},
                                   headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
                    assert r.status_code == 200, r.text

                traffic = Traffic(proxy.base)
                targets = [(proxy.base.removeprefix("http://"), {"namespace": NAMESPACE}),
                           (page.base.removeprefix("http://"), {"namespace": NAMESPACE})]  # fmt: skip
                prom = PrometheusServer(targets=targets, scrape_interval="1s").start()
                traffic.thread.start()
                try:
                    prom.wait_for_value(
                        f'min(count_over_time({{__name__="tierguard_outcome_events_total",namespace="{NAMESPACE}"}}[10s]))',
                        lambda v: v >= 8,
                        timeout=60,
                    )
                    _check(prom, _config_hash(proxy.base), proxy.base, spec)
                finally:
                    traffic.stop.set()
                    traffic.thread.join(timeout=30)
                    prom.stop()
                assert not traffic.errors, traffic.errors[:3]
    finally:
        for p in sims.values():
            p.stop()


def _check(prom: PrometheusServer, config_hash: str, proxy_base: str, cascade_spec: dict) -> None:
    spec = CascadePolicySpec.model_validate(
        {**cascade_spec, "rollout": {"interval": "10s", "minSamples": 5, "failureThreshold": 2},
         "slos": [{"name": "quality"}]}
    )  # fmt: skip
    canary = Revision.of(spec.cascade())
    text = httpx.get(f"{proxy_base}/metrics").text
    assert f'revision="{canary.name}"' in text, "the proxy answers under another revision name"
    status = PolicyStatus(
        phase="Progressing", canary=canary, canary_revision=canary.name, canary_weight=10,
        step_started_at=datetime(2020, 1, 1, tzinfo=UTC), config_hash=config_hash, failed_checks=1,
    )  # fmt: skip
    deadline = time.time() + 30
    while True:
        obs = observe("unit", NAMESPACE, spec, status, {"quality": SLO}, PrometheusProvider(prom.url))
        by = {(c.objective, c.tier): c for c in obs.checks}
        if obs.provider_error is None and obs.config_current and by[("handoffs", "cheap")].value is not None:
            break
        assert time.time() < deadline, (obs.provider_error, obs.config_message, obs.checks)
        time.sleep(1)
    reviewed = by[("reviewed", "cheap")]
    assert reviewed.verdict is Verdict.BREACH and reviewed.value == pytest.approx(0.6)
    assert by[("reviewed-big", "big")].verdict is Verdict.PASS and by[("reviewed-big", "big")].value == 1.0
    handoffs = by[("handoffs", "cheap")]
    assert handoffs.verdict is Verdict.BREACH
    assert handoffs.value == pytest.approx(1 / HANDOFF_EVERY, abs=0.08)
    big = by[("handoffs-big", "big")]  # answered, and never handed off
    assert big.verdict is Verdict.PASS and big.value == 0.0
    d = decide(spec.rollout, status, obs, datetime.now(UTC))
    assert isinstance(d, Rollback)
    assert {b.objective for b in d.breaches} == {"reviewed", "handoffs"}
