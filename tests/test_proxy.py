"""The proxy against real `tierguard sim` processes on loopback (no mocked HTTP)."""

from __future__ import annotations

import concurrent.futures
import json
import math
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from procs import REPO, child_env, start_proxy, start_sim, write_outcomes

MODELS = ("cheap", "mid", "big")


def row(qid, prompt, confs, answers=None, tokens_out=1):
    answers = answers or {m: f"{m}-{qid}" for m in MODELS}
    return {
        "qid": qid,
        "user_prompt": prompt,
        "benchmark": "unit",
        "split": "test",
        "models": {
            m: {
                "answer": answers[m],
                "correct": True,
                "conf_logprob": math.log(c),
                "latency_ms": 100.0,
                "tokens_in": 10,
                "tokens_out": tokens_out,
            }
            for m, c in zip(MODELS, confs)
        },
    }


LONG_ANSWER = " ".join(f"w{i}" for i in range(40))
ROWS = [
    row("easy", "easy question", (0.95, 0.9, 0.9)),
    row("medium", "medium question", (0.5, 0.95, 0.9)),
    row("hard", "hard question", (0.3, 0.4, 0.9)),
    row("same", "same answer question", (0.95, 0.9, 0.9), answers={m: "B" for m in MODELS}),
    row("long", "long question", (0.2, 0.95, 0.9), answers={m: LONG_ANSWER for m in MODELS}, tokens_out=40),
]


def chat(content, **extra):
    return {"model": "any", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "outcomes.jsonl"
    write_outcomes(path, ROWS)
    return path


@pytest.fixture(scope="module")
def sims(data_file):
    procs = {m: start_sim(data_file, m, latency_scale=0) for m in MODELS}
    yield procs
    for p in procs.values():
        p.stop()


def cascade(sims, thresholds=(0.8, 0.8), aggregate="quantile", timeout=5.0, tiers=MODELS):
    return {
        "tiers": [
            {
                "name": m,
                "baseUrl": sims[m].url,
                "model": m,
                "priceInputPerMillion": 1.0 * (i + 1),
                "priceOutputPerMillion": 2.0 * (i + 1),
                "timeoutSeconds": timeout,
                "confidence": {"threshold": thresholds[i] if i < len(thresholds) else 0.5},
            }
            for i, m in enumerate(tiers)
        ],
        "confidence": {"method": "logprob", "aggregate": aggregate, "quantile": 0.1},
    }


def replace_file(path: Path, text: str) -> None:
    """Write atomically (as a ConfigMap volume update does): the proxy never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_policy(path: Path, spec: dict) -> Path:
    replace_file(
        path,
        yaml.safe_dump(
            {
                "apiVersion": "tierguard.io/v1alpha1",
                "kind": "CascadePolicy",
                "metadata": {"name": "unit", "namespace": "ns"},
                "spec": spec,
            }
        ),
    )
    return path


def read_log(path: Path, count: int = 1, event: str = "request") -> list[dict]:
    """The decision log's entries of one kind, once at least ``count`` are there (it is flushed every second)."""
    deadline = time.time() + 5
    entries: list[dict] = []
    while time.time() < deadline:
        if path.exists():
            entries = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            entries = [e for e in entries if e.get("event") == event]
            if len(entries) >= count:
                break
        time.sleep(0.1)
    return entries


@pytest.fixture(scope="module")
def proxy(sims, tmp_path_factory):
    d = tmp_path_factory.mktemp("proxy")
    policy = write_policy(d / "policy.yaml", cascade(sims))
    p = start_proxy(
        policy, decision_log=str(d / "decisions.jsonl"), env={"TIERGUARD_FEEDBACK_KEY": "unit-key"}
    )
    p.decision_log = d / "decisions.jsonl"
    yield p
    p.stop()


def post(proxy, body, **kw):
    return httpx.post(f"{proxy.base}/v1/chat/completions", json=body, timeout=30, **kw)


def metric(proxy, name, **labels):
    text = httpx.get(f"{proxy.base}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_cheap_tier_accepts_a_confident_answer(proxy):
    r = post(proxy, chat("easy question"))
    assert r.status_code == 200
    assert r.headers["x-tierguard-tier"] == "cheap"
    assert float(r.headers["x-tierguard-confidence"]) == pytest.approx(0.95, abs=1e-3)
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "cheap-easy"
    assert body["id"].startswith("chatcmpl-tg1.")
    assert "logprobs" not in body["choices"][0]  # not requested by the client


def test_escalates_through_tiers(proxy):
    r = post(proxy, chat("medium question"))
    assert (r.headers["x-tierguard-tier"], r.headers["x-tierguard-tiers-tried"]) == ("mid", "cheap,mid")
    assert r.json()["choices"][0]["message"]["content"] == "mid-medium"
    r = post(proxy, chat("hard question"))
    assert (r.headers["x-tierguard-tier"], r.headers["x-tierguard-tiers-tried"]) == ("big", "cheap,mid,big")


def test_client_logprobs_are_passed_through(proxy):
    r = post(proxy, chat("easy question", logprobs=True))
    lp = r.json()["choices"][0]["logprobs"]["content"][0]["logprob"]
    assert lp == pytest.approx(math.log(0.95), abs=1e-3)


def test_decision_log_and_metrics(proxy):
    n = len(read_log(proxy.decision_log, 0))
    watched = {
        "escalated": ("tierguard_escalations_total", {"tier": "cheap", "reason": "low_confidence"}),
        "big_ok": ("tierguard_requests_total", {"tier": "big", "status": "ok"}),
        "cheap_scored": ("tierguard_confidence_count", {"tier": "cheap"}),
        "cost": ("tierguard_counterfactual_cost_usd_total", {}),
    }
    before = {k: metric(proxy, name, **labels) for k, (name, labels) in watched.items()}
    post(proxy, chat("hard question"))
    last = read_log(proxy.decision_log, n + 1)[-1]
    assert last["answered_by"] == "big"
    assert [t["tier"] for t in last["tiers"]] == ["cheap", "mid", "big"]
    assert [t["reason"] for t in last["tiers"]] == ["low_confidence", "low_confidence", "last_tier"]
    assert last["cost_usd"] > 0
    assert "hard question" not in proxy.decision_log.read_text()  # prompts are not logged by default
    after = {k: metric(proxy, name, **labels) for k, (name, labels) in watched.items()}
    # deltas of this one request: the module's proxy has served the other tests' requests too
    assert after["escalated"] == before["escalated"] + 1
    assert after["big_ok"] == before["big_ok"] + 1
    assert after["cheap_scored"] == before["cheap_scored"] + 1
    assert after["cost"] > before["cost"]
    assert metric(proxy, "tierguard_config_info", policy="unit") == 1
    assert "hard question" not in httpx.get(f"{proxy.base}/metrics").text


def test_feedback_is_joined_to_the_decision(proxy):
    down = metric(proxy, "tierguard_feedback_total", tier="mid", rating="down")
    duplicates = metric(proxy, "tierguard_feedback_rejected_total", reason="duplicate")
    r = post(proxy, chat("medium question"))
    f = httpx.post(f"{proxy.base}/v1/feedback", json={"id": r.json()["id"], "rating": "down"})
    assert f.status_code == 200
    assert f.json()["tier"] == "mid"
    assert f.json()["revision"] == r.headers["x-tierguard-revision"]
    assert metric(proxy, "tierguard_feedback_total", tier="mid", rating="down") == down + 1
    again = httpx.post(f"{proxy.base}/v1/feedback", json={"id": r.json()["id"], "rating": "down"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate"
    assert metric(proxy, "tierguard_feedback_rejected_total", reason="duplicate") == duplicates + 1


def _streamed_id(proxy, content):
    with httpx.stream("POST", f"{proxy.base}/v1/chat/completions", json=chat(content, stream=True), timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                return json.loads(line[6:])["id"]
    raise AssertionError("no chunk with an id")


def test_feedback_goes_to_the_tier_that_answered_per_the_decision_log(proxy):
    """Feedback cannot be attributed to a tier that did not answer: checked against the decision
    log, every feedback entry names its request's ``answered_by``, never a tier that was only
    tried (the cheap and mid tiers tried and refused the escalated answers)."""
    prompts = ["easy question", "medium question", "hard question", "long question"]
    ids = [post(proxy, chat(p)).json()["id"] for p in prompts]
    ids += [_streamed_id(proxy, p) for p in prompts]
    for rid in ids:
        f = httpx.post(f"{proxy.base}/v1/feedback", json={"id": rid, "rating": "down"})
        assert f.status_code == 200, f.text
    mine = set(ids)  # the log also holds other tests' entries, flushed every second

    def logged(event):
        deadline = time.time() + 5
        while True:
            entries = [e for e in read_log(proxy.decision_log, 0, event=event) if e.get("id") in mine]
            if len(entries) >= len(mine) or time.time() > deadline:
                return entries

    requests = {e["id"]: e for e in logged("request")}
    feedback = logged("feedback")
    assert sorted(f["id"] for f in feedback) == sorted(ids) == sorted(requests)
    only_tried = set()
    for fb in feedback:
        req = requests[fb["id"]]
        assert (fb["tier"], fb["revision"]) == (req["answered_by"], req["revision"]), (fb, req)
        only_tried |= {t["tier"] for t in req["tiers"]} - {req["answered_by"]}
    assert {f["tier"] for f in feedback} == {"cheap", "mid", "big"}
    assert only_tried == {"cheap", "mid"}  # the check covered tiers that did not answer


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "chatcmpl-123", "rating": "up"},
        {"id": "chatcmpl-tg1.cmV2fG1pZHwxfDAw.AAAAAAAAAAAAAAAAAAAAAA", "rating": "up"},
        {"id": None, "rating": "up"},
    ],
)
def test_forged_feedback_is_rejected_and_counted(proxy, payload):
    before = metric(proxy, "tierguard_feedback_rejected_total")
    f = httpx.post(f"{proxy.base}/v1/feedback", json=payload)
    assert f.status_code == 400
    assert f.json()["error"]["param"] == "id"
    assert metric(proxy, "tierguard_feedback_rejected_total") == before + 1


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (b"{not json", 400, None),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"content": "x"}]}).encode(), 400, "messages[0]"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), 400, "n"),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode(),
            400,
            "stream",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}).encode(),
            400,
            "max_tokens",
        ),
        (json.dumps(chat("x" * (2 << 20))).encode(), 413, None),
        (json.dumps(chat("x", stream=True, stream_options="yes")).encode(), 400, "stream_options"),
        (json.dumps(chat("x", logprobs=True, top_logprobs=50)).encode(), 400, "top_logprobs"),
        (json.dumps(chat("x", logprobs="yes")).encode(), 400, "logprobs"),
        (json.dumps(chat("x", temperature="hot")).encode(), 400, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors(proxy, raw, status, param):
    r = httpx.post(
        f"{proxy.base}/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert "Traceback" not in r.text


def test_health_ready_models(proxy):
    assert httpx.get(f"{proxy.base}/healthz").status_code == 200
    ready = httpx.get(f"{proxy.base}/readyz").json()
    assert ready["status"] == "ready" and len(ready["config_hash"]) == 12
    assert httpx.get(f"{proxy.base}/v1/models").json()["data"][0]["id"] == "unit"


def sse(r: httpx.Response) -> tuple[list[dict], bool]:
    chunks, done = [], False
    for block in r.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                if line == "data: [DONE]":
                    done = True
                else:
                    chunks.append(json.loads(line[6:]))
    return chunks, done


def test_streaming_accepted_cheap_answer(proxy):
    r = post(proxy, chat("easy question", stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-tierguard-tier"] == "cheap"
    chunks, done = sse(r)
    assert done
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "cheap-easy"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-tg1.")


def test_streaming_escalated_answer_streams_from_last_tier(proxy):
    r = post(proxy, chat("hard question", stream=True, stream_options={"include_usage": True}))
    assert r.headers["x-tierguard-tier"] == "big"
    chunks, done = sse(r)
    assert done
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "big-hard"
    assert any(c.get("usage") for c in chunks)


def test_capable_only_and_sticky_canary(sims, tmp_path):
    cas = cascade(sims)
    cfg = {
        "kind": "ProxyConfig",
        "policy": "unit",
        "stable": {"name": "capable-only", "mode": "capable-only", "cascade": cas},
        "canary": {"name": "rev-a", "cascade": cas},
        "canaryWeight": 50,
        "settings": {"decisionLog": None},
    }
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    with start_proxy(f) as p:
        seen = {}
        for u in range(40):
            revs = {
                post(p, chat("easy question", user=f"user-{u}")).headers["x-tierguard-revision"]
                for _ in range(3)
            }
            assert len(revs) == 1  # sticky per conversation
            seen[u] = revs.pop()
        assert set(seen.values()) == {"capable-only", "rev-a"}
        r = post(p, chat("easy question"), headers={"x-tierguard-session": "s-1"})
        again = post(p, chat("easy question"), headers={"x-tierguard-session": "s-1"})
        assert r.headers["x-tierguard-revision"] == again.headers["x-tierguard-revision"]
        for u, rev in seen.items():
            r = post(p, chat("easy question", user=f"user-{u}"))
            assert r.headers["x-tierguard-tier"] == ("big" if rev == "capable-only" else "cheap")


def test_early_abort_stops_the_cheap_stream(data_file, tmp_path):
    # the long answer's first token carries p=0.2 (< 0.8): with `min` acceptance is impossible at once
    slow_cheap = start_sim(
        data_file, "cheap", latency_scale=20
    )  # 100 ms recorded -> 2 s spread over 40 tokens
    others = {m: start_sim(data_file, m, latency_scale=0) for m in ("mid", "big")}
    try:
        spec = cascade({"cheap": slow_cheap, **others}, aggregate="min")
        log = tmp_path / "d.jsonl"
        with start_proxy(write_policy(tmp_path / "p.yaml", spec), decision_log=str(log)) as p:
            r = post(p, chat("long question", stream=True))
            assert r.headers["x-tierguard-tier"] == "mid"
            entry = read_log(log)[-1]
            first = entry["tiers"][0]
            assert first["reason"] == "early_abort"
            assert first["tokens_seen_before_abort"] < 40
            # the counterfactual (big alone) counts the prompt's real tokens, not the aborted
            # stream's 0: mid's reported prompt, mid's answer, at big's prices ($3 in, $6 out)
            assert first["tokens_in"] == 0  # the aborted stream ended before its usage arrived
            mid = entry["tiers"][1]
            assert mid["tokens_in"] > 0
            want = (3.0 * mid["tokens_in"] + 6.0 * mid["tokens_out"]) / 1e6
            assert metric(p, "tierguard_counterfactual_cost_usd_total") == pytest.approx(want, rel=1e-9)
            deadline = time.time() + 5
            while (
                time.time() < deadline
                and httpx.get(f"{slow_cheap.base}/admin/stats").json().get("streams_cancelled", 0) < 1
            ):
                time.sleep(0.1)
            assert httpx.get(f"{slow_cheap.base}/admin/stats").json()["streams_cancelled"] >= 1
    finally:
        slow_cheap.stop()
        for s in others.values():
            s.stop()


def set_faults(sim, **faults):
    r = httpx.post(f"{sim.base}/admin/faults", json=faults)
    assert r.status_code == 200


def test_failures_escalate_and_last_tier_failure_is_an_openai_error(data_file, tmp_path):
    s = {m: start_sim(data_file, m, latency_scale=0) for m in MODELS}
    try:
        log = tmp_path / "d.jsonl"
        with start_proxy(
            write_policy(tmp_path / "p.yaml", cascade(s, timeout=1.0)), decision_log=str(log)
        ) as p:
            set_faults(s["cheap"], error_rate=1.0, error_status=500)
            r = post(p, chat("easy question"))
            assert r.status_code == 200 and r.headers["x-tierguard-tier"] == "mid"
            assert read_log(log)[-1]["tiers"][0]["reason"] == "tier_error"

            set_faults(s["cheap"], error_rate=1.0, error_status=429)
            assert post(p, chat("easy question")).headers["x-tierguard-tier"] == "mid"

            # a request the tier refuses as invalid is the client's mistake: answered at once, not a tier error
            set_faults(s["cheap"], error_rate=1.0, error_status=400)
            r = post(p, chat("easy question"))
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
            assert r.headers["x-tierguard-tiers-tried"] == "cheap"
            assert metric(p, "tierguard_tier_requests_total", tier="cheap", outcome="client_error") == 1
            assert metric(p, "tierguard_requests_total", status="client_error") == 1

            set_faults(s["cheap"], error_rate=0.0, malformed_rate=1.0)
            r = post(p, chat("easy question"))
            assert r.headers["x-tierguard-tier"] == "mid"
            assert "malformed" in read_log(log, 4)[-1]["tiers"][0]["error"]
            set_faults(s["cheap"], malformed_rate=0.0)

            set_faults(s["cheap"], extra_latency_ms=3000)  # beyond the 1 s tier timeout
            r = post(p, chat("easy question"))
            assert r.headers["x-tierguard-tier"] == "mid"
            set_faults(s["cheap"], extra_latency_ms=0)

            set_faults(s["big"], error_rate=1.0, error_status=503)
            r = post(p, chat("hard question"))
            assert r.status_code == 502
            assert r.json()["error"]["type"] == "upstream_error"
            set_faults(s["big"], error_rate=1.0, error_status=429)
            r = post(p, chat("hard question"))
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            set_faults(s["big"], error_rate=0.0, malformed_rate=1.0)
            r = post(p, chat("hard question"))
            assert r.status_code == 502 and r.json()["error"]["code"] == "malformed"
            set_faults(s["big"], malformed_rate=0.0)
            assert metric(p, "tierguard_escalations_total", tier="cheap", reason="tier_error") >= 4
            assert metric(p, "tierguard_requests_total", status="error") >= 2
    finally:
        for x in s.values():
            x.stop()


def test_unreachable_tier_escalates(data_file, tmp_path):
    s = {m: start_sim(data_file, m, latency_scale=0) for m in ("mid", "big")}
    try:
        spec = cascade({"cheap": s["mid"], **s})
        spec["tiers"][0]["baseUrl"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        with start_proxy(write_policy(tmp_path / "p.yaml", spec)) as p:
            r = post(p, chat("medium question"))
            assert r.status_code == 200 and r.headers["x-tierguard-tier"] == "mid"
    finally:
        for x in s.values():
            x.stop()


def test_reload_under_load_drops_nothing(sims, tmp_path):
    policy = write_policy(tmp_path / "p.yaml", cascade(sims, thresholds=(0.8, 0.8)))
    with start_proxy(policy, reload_interval=0.2) as p:
        before = httpx.get(f"{p.base}/readyz").json()["config_hash"]

        def one(i):
            return post(p, chat("medium question", user=f"u{i}"))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(300)]
            time.sleep(0.2)
            # lower the cheap threshold: medium (p=0.5) is now accepted by the cheap tier
            write_policy(policy, cascade(sims, thresholds=(0.4, 0.8)))
            results = [f.result() for f in futures]
        assert all(r.status_code == 200 for r in results)
        deadline = time.time() + 5
        while time.time() < deadline and httpx.get(f"{p.base}/readyz").json()["config_hash"] == before:
            time.sleep(0.1)
        after = httpx.get(f"{p.base}/readyz").json()["config_hash"]
        assert after != before
        assert post(p, chat("medium question")).headers["x-tierguard-tier"] == "cheap"
        assert metric(p, "tierguard_config_info", config_hash=after) == 1

        # an invalid file is refused and the last good config keeps serving
        replace_file(policy, "tiers: []\n")
        deadline = time.time() + 5
        while time.time() < deadline and metric(p, "tierguard_config_reloads_total", result="invalid") < 1:
            time.sleep(0.1)
        assert metric(p, "tierguard_config_reloads_total", result="invalid") == 1
        assert httpx.get(f"{p.base}/readyz").json()["config_hash"] == after
        assert post(p, chat("medium question")).status_code == 200


def test_self_eval_confidence(data_file, tmp_path):
    s = {m: start_sim(data_file, m, latency_scale=0) for m in ("cheap", "big")}
    try:
        spec = cascade(s, tiers=("cheap", "big"))
        spec["confidence"] = {"method": "self_eval"}
        log = tmp_path / "d.jsonl"
        with start_proxy(write_policy(tmp_path / "p.yaml", spec), decision_log=str(log)) as p:
            r = post(p, chat("easy question"))  # P(Y) = 0.95 >= 0.8
            assert r.headers["x-tierguard-tier"] == "cheap"
            assert float(r.headers["x-tierguard-confidence"]) == pytest.approx(0.95, abs=1e-3)
            # the verification call is paid for: its tokens are in the log, the cost and the metrics
            t = read_log(log)[-1]["tiers"][0]
            vin, vout = t["self_eval_tokens_in"], t["self_eval_tokens_out"]
            assert vin > t["tokens_in"] and vout == 1  # the question repeats the prompt and the answer
            cheap_cost = (1.0 * (t["tokens_in"] + vin) + 2.0 * (t["tokens_out"] + vout)) / 1e6
            assert t["cost_usd"] == pytest.approx(cheap_cost, rel=1e-12)
            assert metric(p, "tierguard_tokens_total", tier="cheap", direction="in") == t["tokens_in"] + vin
            assert metric(p, "tierguard_cost_usd_total", tier="cheap") == pytest.approx(cheap_cost, rel=1e-9)
            # big alone would have answered without verifying ($2 in, $4 out)
            big_alone = (2.0 * t["tokens_in"] + 4.0 * t["tokens_out"]) / 1e6
            assert metric(p, "tierguard_counterfactual_cost_usd_total") == pytest.approx(big_alone, rel=1e-9)
            assert post(p, chat("medium question")).headers["x-tierguard-tier"] == "big"
    finally:
        for x in s.values():
            x.stop()


def test_bad_policy_file_fails_cleanly(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "p.yaml"
    f.write_text("tiers: [{name: a}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "tierguard", "proxy", "--policy", str(f)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "invalid CascadePolicy spec" in r.stderr and "Traceback" not in r.stderr


def test_prompt_logging_only_when_enabled(sims, tmp_path):
    log = tmp_path / "d.jsonl"
    cfg = {
        "kind": "ProxyConfig",
        "policy": "unit",
        "stable": {"name": "r1", "cascade": cascade(sims)},
        "settings": {"decisionLog": str(log), "logPrompts": True},
    }
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    with start_proxy(f) as p:
        post(p, chat("easy question"))
        assert read_log(log)[-1]["messages"] == [{"role": "user", "content": "easy question"}]


def test_shadow_scoring_measures_false_accepts(sims, tmp_path):
    log = tmp_path / "d.jsonl"
    cfg = {
        "kind": "ProxyConfig",
        "policy": "unit",
        "stable": {"name": "r1", "cascade": cascade(sims)},
        "settings": {"decisionLog": str(log), "shadowRate": 1.0},
    }
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    with start_proxy(f) as p:
        post(p, chat("easy question"))  # cheap answers "cheap-easy", big would say "big-easy"
        post(p, chat("same answer question"))  # both say "B"
        post(p, chat("hard question", stream=True))  # answered by the last tier: nothing to shadow
        shadows = read_log(log, 2, event="shadow")
        assert sorted(e["agree"] for e in shadows) == [False, True]
        assert {e["tier"] for e in shadows} == {"cheap"}
        assert metric(p, "tierguard_shadow_samples_total", tier="cheap") == 2
        assert metric(p, "tierguard_shadow_disagreements_total", tier="cheap") == 1
        assert metric(p, "tierguard_shadow_samples_total", tier="big") == 0
        assert metric(p, "tierguard_shadow_cost_usd_total") > 0


def test_reload_rotates_feedback_key_and_moves_the_decision_log(sims, tmp_path):
    key_file = tmp_path / "key2"
    key_file.write_text("second-key\n")
    log1, log2 = tmp_path / "d1.jsonl", tmp_path / "d2.jsonl"

    def config(settings):
        return {
            "kind": "ProxyConfig",
            "policy": "unit",
            "stable": {"name": "r1", "cascade": cascade(sims)},
            "settings": settings,
        }

    f = tmp_path / "cfg.yaml"
    replace_file(f, yaml.safe_dump(config({"feedbackKey": {"env": "KEY1"}, "decisionLog": str(log1)})))
    with start_proxy(f, env={"KEY1": "first-key"}, reload_interval=0.2) as p:
        old_id = post(p, chat("easy question")).json()["id"]
        before = httpx.get(f"{p.base}/readyz").json()["config_hash"]
        replace_file(
            f, yaml.safe_dump(config({"feedbackKey": {"file": str(key_file)}, "decisionLog": str(log2)}))
        )
        deadline = time.time() + 5
        while time.time() < deadline and httpx.get(f"{p.base}/readyz").json()["config_hash"] == before:
            time.sleep(0.1)
        new_id = post(p, chat("easy question")).json()["id"]
        for rid in (old_id, new_id):  # ids signed before the rotation still verify
            assert httpx.post(f"{p.base}/v1/feedback", json={"id": rid, "rating": "up"}).status_code == 200
        assert len(read_log(log2)) == 1 and read_log(log2)[0]["id"] == new_id
        assert len(read_log(log1)) == 1
    # the new key alone verifies the new id, not the old one
    from tierguard.proxy.ids import IdSigner, InvalidId

    assert IdSigner(b"second-key").verify(new_id).tier == "cheap"
    with pytest.raises(InvalidId):
        IdSigner(b"second-key").verify(old_id)


def test_port_out_of_range_is_a_usage_error():
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierguard",
            "proxy",
            "--policy",
            "examples/local-policy.yaml",
            "--port",
            "99999",
        ],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "port must be 0-65535" in r.stderr


def test_sigterm_with_a_drain_period_keeps_serving_not_ready_and_closing_connections(sims, tmp_path):
    """--drain-seconds: after SIGTERM the proxy still answers, /readyz is 503 (the Service drops
    it), every response says Connection: close (keep-alive clients move on); then it exits."""
    with start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims)), drain_seconds=2) as p:
        with httpx.Client(base_url=p.base) as client:
            assert client.get("/readyz").status_code == 200
            assert (
                client.post("/v1/chat/completions", json=chat("easy question")).headers.get("connection")
                != "close"
            )
            t0 = time.monotonic()
            p.proc.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            r = client.post("/v1/chat/completions", json=chat("easy question"))
            assert r.status_code == 200 and r.headers["connection"] == "close"
        p.proc.proc.wait(timeout=15)
        assert 1.8 <= time.monotonic() - t0 < 12
