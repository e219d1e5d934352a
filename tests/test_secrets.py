"""Secrets never leave the proxy: a canary API key and a canary feedback key, the whole request
surface exercised (answers, escalations, a tier that refuses the key and quotes it back, streams,
feedback, bad input, reload), then every output grepped: responses and their headers, the
proxy's log, the decision log, /metrics, /readyz, /v1/models.

The operator side needs no such test: it never reads a Secret (its Role has no access to
Secrets, tests/test_operator_k8s.py), it only renders references to them.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from procs import start_proxy, start_sim, write_outcomes
from test_proxy import ROWS, cascade, chat, replace_file, write_policy

TIER_KEY = "sk-canary-3f9c2a7be41d5068"
FEEDBACK_KEY = "fb-canary-9d1e4c27a86b3f05"
FRAGMENTS = [TIER_KEY, TIER_KEY[10:], FEEDBACK_KEY, FEEDBACK_KEY[10:]]  # whole or in part


def test_canary_keys_appear_in_no_output(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "o.jsonl", ROWS)
    env = {"TIER_KEY": TIER_KEY, "OTHER_KEY": "sk-the-big-tier-wants-this-one"}
    sims = {
        "cheap": start_sim(data, "cheap", latency_scale=0, api_key_env="TIER_KEY", env=env),
        "mid": start_sim(data, "mid", latency_scale=0, api_key_env="TIER_KEY", env=env),
        # the last tier expects another key: it refuses the canary and quotes it in its error
        "big": start_sim(data, "big", latency_scale=0, api_key_env="OTHER_KEY", env=env),
    }
    outputs: list[str] = []
    try:
        spec = cascade(sims)
        for tier in spec["tiers"]:
            tier["apiKey"] = {"env": "TIER_KEY"}
        spec["proxy"] = {"feedbackKey": {"env": "FEEDBACK_KEY"}}
        policy = write_policy(tmp_path / "p.yaml", spec)
        decisions = tmp_path / "decisions.jsonl"
        proxy_env = {"TIER_KEY": TIER_KEY, "FEEDBACK_KEY": FEEDBACK_KEY}
        with start_proxy(policy, env=proxy_env, decision_log=str(decisions), reload_interval=0.2) as p:
            url = f"{p.url}/chat/completions"

            def keep(r: httpx.Response) -> httpx.Response:
                outputs.append(f"{r.status_code} {dict(r.headers)} {r.text}")
                return r

            ok = keep(httpx.post(url, json=chat("easy question"), timeout=30))
            assert ok.status_code == 200 and ok.headers["x-tierguard-tier"] == "cheap"
            refused = keep(httpx.post(url, json=chat("hard question"), timeout=30))
            assert refused.status_code == 401, refused.text  # the big tier's refusal, passed on
            assert "[redacted]" in refused.text  # what it quoted is gone
            keep(httpx.post(url, json=chat("hard question", stream=True), timeout=30))
            keep(httpx.post(url, json=chat("medium question", stream=True), timeout=30))
            for body in ({"id": ok.json()["id"], "rating": "up"}, {"id": "chatcmpl-tg1.x.y", "rating": "down"},
                         {"id": ok.json()["id"], "rating": "up"}):  # fmt: skip
                keep(httpx.post(f"{p.url}/feedback", json=body, timeout=30))
            keep(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}))
            keep(httpx.post(url, json={"messages": [{"role": "user", "content": TIER_KEY[:6]}], "n": 2}))
            # an invalid reload (the error names the file, never the environment)
            replace_file(policy, policy.read_text().replace("TIER_KEY", "MISSING_KEY"))
            keep(httpx.get(f"{p.base}/readyz"))
            for path in ("/metrics", "/readyz", "/v1/models", "/healthz"):
                outputs.append(keep(httpx.get(f"{p.base}{path}")).text)
        outputs.append(p.log_text())
        outputs.append(decisions.read_text())
    finally:
        for s in sims.values():
            s.stop()
    everything = "\n".join(outputs)
    assert "[redacted]" in everything
    leaks = [f for f in FRAGMENTS if f in everything]
    assert not leaks, f"secret fragments in the outputs: {leaks}"
