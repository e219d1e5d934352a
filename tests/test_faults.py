"""Data-plane faults, each against a real proxy in front of real simulators (no mocked HTTP).

Covered elsewhere: a tier failing with 5xx/429/400, a malformed reply, a tier slower than its
timeout, an unreachable cheap tier (tests/test_proxy.py). Here: every tier hanging (bounded by the
timeouts), 429 with Retry-After on the last tier, a stream cut midway (cheap tier: escalate; last
tier: the client's stream ends with an error, no hang and no false [DONE]), an invalid policy file
(the last good config keeps serving, said in /readyz and a metric), and SIGTERM draining requests
in flight, streaming ones included.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import RunningProcess, start_proxy, start_sim, write_outcomes
from test_proxy import (
    LONG_ANSWER,
    MODELS,
    ROWS,
    cascade,
    chat,
    metric,
    post,
    replace_file,
    set_faults,
    write_policy,
)


@pytest.fixture
def sims(tmp_path: Path) -> Any:
    data = write_outcomes(tmp_path / "o.jsonl", ROWS)
    procs = {m: start_sim(data, m, latency_scale=0) for m in MODELS}
    yield procs
    for p in procs.values():
        p.stop()


def stream_events(proxy: RunningProcess, body: dict[str, Any], timeout: float = 30) -> tuple[int, list[str]]:
    """POST a streaming request; the status and every ``data:`` payload until the stream ends."""
    with httpx.stream("POST", f"{proxy.url}/chat/completions", json=body, timeout=timeout) as r:
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
        return r.status_code, events


def test_every_tier_hanging_is_a_clean_error_bounded_by_the_timeouts(sims: Any, tmp_path: Path) -> None:
    for s in sims.values():
        set_faults(s, timeout_rate=1.0, hang_seconds=60)
    with start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims, timeout=1.0))) as p:
        t0 = time.monotonic()
        r = post(p, chat("easy question"))
        took = time.monotonic() - t0
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error", r.text
        assert r.headers["x-tierguard-tiers-tried"] == "cheap,mid,big"
        assert took < 3 * 1.0 + 1.5, took  # three 1 s timeouts, nothing more
        # streaming: the same bound, an OpenAI error instead of a hang
        t0 = time.monotonic()
        status, events = stream_events(p, chat("easy question", stream=True))
        assert time.monotonic() - t0 < 3 * 1.0 + 1.5
        assert status == 504 or any('"error"' in e for e in events), (status, events)
        assert "[DONE]" not in events


def test_rate_limited_last_tier_passes_retry_after(sims: Any, tmp_path: Path) -> None:
    set_faults(sims["big"], error_rate=1.0, error_status=429, retry_after_s=7)
    with start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims))) as p:
        r = post(p, chat("hard question"))
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers.get("retry-after") == "7"
        # a rate-limited cheap tier only escalates (its Retry-After is not the client's business)
        set_faults(sims["big"], error_rate=0.0)
        set_faults(sims["cheap"], error_rate=1.0, error_status=429, retry_after_s=7)
        r = post(p, chat("easy question"))
        assert (
            r.status_code == 200 and r.headers["x-tierguard-tier"] == "mid" and "retry-after" not in r.headers
        )


def test_stream_cut_midway(sims: Any, tmp_path: Path) -> None:
    with start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims, thresholds=(0.1, 0.1)))) as p:
        # the cheap tier drops the connection halfway: its answer is unusable, the next tier answers
        set_faults(sims["cheap"], stream_cut_rate=1.0)
        status, events = stream_events(p, chat("long question", stream=True))
        assert status == 200 and events[-1] == "[DONE]"
        text = "".join(
            (c.get("delta") or {}).get("content") or ""
            for e in events[:-1]
            for c in json.loads(e).get("choices", [])
        )
        assert text == LONG_ANSWER
        assert httpx.get(f"{sims['cheap'].base}/admin/stats").json()["injected_stream_cuts"] == 1

        # the last tier is cut after part of its answer reached the client: the stream ends at
        # once with an error event, never a [DONE] that would pass a half answer off as whole
        set_faults(sims["cheap"], stream_cut_rate=0.0, error_rate=1.0)
        set_faults(sims["mid"], error_rate=1.0)
        set_faults(sims["big"], stream_cut_rate=1.0)
        t0 = time.monotonic()
        status, events = stream_events(p, chat("long question", stream=True), timeout=15)
        assert time.monotonic() - t0 < 5
        assert "[DONE]" not in events, events[-3:]
        assert any('"error"' in e for e in events), events[-3:]
        assert metric(p, "tierguard_requests_total", status="error") >= 1


def test_invalid_policy_file_keeps_the_last_good_config(sims: Any, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yaml", cascade(sims))
    with start_proxy(policy, reload_interval=0.2) as p:
        good = httpx.get(f"{p.base}/readyz").json()
        rejected = metric(p, "tierguard_config_reloads_total", result="invalid")
        replace_file(policy, "tiers: [{name: a}]\n")
        deadline = time.monotonic() + 10
        while metric(p, "tierguard_config_reloads_total", result="invalid") == rejected:
            assert time.monotonic() < deadline, "the invalid file was never noticed"
            time.sleep(0.1)
        ready = httpx.get(f"{p.base}/readyz")
        assert ready.status_code == 200  # still serving
        body = ready.json()
        assert body["config_hash"] == good["config_hash"]
        assert "invalid CascadePolicy spec" in body["config_error"]
        assert metric(p, "tierguard_config_rejected") == 1
        assert post(p, chat("easy question")).status_code == 200
        # a good file again clears it
        write_policy(policy, cascade(sims, thresholds=(0.7, 0.7)))
        deadline = time.monotonic() + 10
        while httpx.get(f"{p.base}/readyz").json()["config_hash"] == good["config_hash"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"{p.base}/readyz").json().get("config_error") is None
        assert metric(p, "tierguard_config_rejected") == 0


def test_sigterm_drains_requests_in_flight_including_streams(sims: Any, tmp_path: Path) -> None:
    for s in sims.values():
        set_faults(s, extra_latency_ms=1500)
    p = start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims)))
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            plain = [pool.submit(post, p, chat("easy question")) for _ in range(2)]
            streams = [pool.submit(stream_events, p, chat("easy question", stream=True)) for _ in range(2)]
            deadline = time.monotonic() + 10
            while metric(p, "tierguard_in_flight_requests") < 4:  # all four wait on the cheap tier
                assert time.monotonic() < deadline, "the requests never arrived"
                time.sleep(0.05)
            assert p.proc.proc is not None
            p.proc.proc.send_signal(signal.SIGTERM)
            for f in plain:
                r = f.result(timeout=20)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "cheap-easy"
            for f in streams:
                status, events = f.result(timeout=20)
                assert status == 200 and events[-1] == "[DONE]", events[-3:]
        assert p.proc.proc.wait(timeout=15) == 0
        with pytest.raises(httpx.TransportError):  # and it no longer accepts new work
            post(p, chat("easy question"))
    finally:
        p.stop()


def test_a_client_gone_before_its_stream_starts_is_no_error(sims: Any, tmp_path: Path) -> None:
    """Found by the sustained-load benchmark: a client that timed out while the cheap tier was
    still being buffered made the proxy log a traceback when it began the stream."""
    set_faults(sims["cheap"], extra_latency_ms=1500)
    with start_proxy(write_policy(tmp_path / "p.yaml", cascade(sims))) as p:
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                stream_events(p, chat("easy question", stream=True), timeout=0.5)
        time.sleep(2.5)  # the cheap answers arrive, the proxy starts writing to closed connections
        status, events = stream_events(p, chat("medium question", stream=True))
        assert status == 200 and events[-1] == "[DONE]"
        assert "Traceback" not in p.log_text(), p.log_text()[-2000:]


def test_client_keys_guard_the_openai_endpoints_only(sims: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-one\nkey-two\n")
    spec = {**cascade(sims), "proxy": {"clientKeys": {"file": str(keys)}}}
    policy = write_policy(tmp_path / "p.yaml", spec)
    with start_proxy(policy, reload_interval=0.2) as p:
        url = f"{p.url}/chat/completions"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "key-one"}):
            r = httpx.post(url, json=chat("easy question"), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
            assert (
                httpx.post(f"{p.url}/feedback", json={"id": "x", "rating": "up"}, headers=headers).status_code
                == 401
            )
        for key in ("key-one", "key-two"):
            r = httpx.post(url, json=chat("easy question"), headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and Prometheus stay open
            assert httpx.get(f"{p.base}{path}").status_code == 200
        assert metric(p, "tierguard_bad_requests_total", reason="unauthorized") == 6
        # rotation through a reload: key-one retired, key-three added
        keys.write_text("key-two\nkey-three\n")
        write_policy(policy, {**spec, "proxy": {"clientKeys": {"file": str(keys)}, "shadowRate": 0.0}})
        deadline = time.monotonic() + 10
        while (
            httpx.post(
                url, json=chat("easy question"), headers={"Authorization": "Bearer key-three"}
            ).status_code
            != 200
        ):
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.2)
        assert (
            httpx.post(
                url, json=chat("easy question"), headers={"Authorization": "Bearer key-one"}
            ).status_code
            == 401
        )


def test_secret_files_rotate_in_place_without_a_config_change(tmp_path: Path) -> None:
    """A mounted Secret changes its file, not the policy: the proxy reads the new tier API key,
    client keys and feedback key within a reload interval. Ids signed before the rotation still
    verify; ids signed after it verify on a replica that only has the new key."""
    data = write_outcomes(tmp_path / "o.jsonl", ROWS)
    sims = {
        "cheap": start_sim(
            data, "cheap", latency_scale=0, api_key_env="SIM_KEY", env={"SIM_KEY": "tier-new"}
        ),
        "big": start_sim(data, "big", latency_scale=0),
    }
    tier_key, clients, feedback = tmp_path / "tier-key", tmp_path / "clients", tmp_path / "feedback-key"
    tier_key.write_text("tier-old\n")  # the cheap tier refuses it: answers escalate
    clients.write_text("client-old\n")
    feedback.write_text("feedback-old\n")
    spec = cascade(sims, tiers=("cheap", "big"))
    spec["tiers"][0]["apiKey"] = {"file": str(tier_key)}
    spec["proxy"] = {"clientKeys": {"file": str(clients)}, "feedbackKey": {"file": str(feedback)}}
    policy = write_policy(tmp_path / "p.yaml", spec)
    other = tmp_path / "other.yaml"  # a second replica that only ever has the new feedback key
    (tmp_path / "feedback-new").write_text("feedback-new\n")
    write_policy(
        other, {**spec, "proxy": {**spec["proxy"], "feedbackKey": {"file": str(tmp_path / "feedback-new")}}}
    )
    try:
        with start_proxy(policy, reload_interval=0.2) as p, start_proxy(other, reload_interval=0.2) as q:

            def ask(key: str) -> httpx.Response:
                return httpx.post(f"{p.url}/chat/completions", json=chat("easy question"),
                                  headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip

            def rate(proxy: RunningProcess, response_id: str) -> int:
                return httpx.post(f"{proxy.url}/feedback", json={"id": response_id, "rating": "up"},
                                  headers={"Authorization": "Bearer client-new"}).status_code  # fmt: skip

            before = ask("client-old")
            assert (
                before.status_code == 200 and before.headers["x-tierguard-tier"] == "big"
            )  # cheap refused the key
            reloads = metric(p, "tierguard_config_reloads_total", result="applied")

            tier_key.write_text("tier-new\n")
            clients.write_text("client-new\n")
            feedback.write_text("feedback-new\n")
            deadline = time.monotonic() + 10
            while (r := ask("client-new")).status_code != 200 or r.headers["x-tierguard-tier"] != "cheap":
                assert time.monotonic() < deadline, (r.status_code, r.headers.get("x-tierguard-tier"))
                time.sleep(0.2)
            assert ask("client-old").status_code == 401  # the retired client key
            assert metric(p, "tierguard_config_reloads_total", result="applied") > reloads
            assert rate(p, before.json()["id"]) == 200  # signed with the previous key: still verifies
            assert rate(q, r.json()["id"]) == 200  # signed with the new key, as q's only key is
            assert rate(q, before.json()["id"]) == 400  # the old key never reached q
            assert "tier-old" not in p.log_text() and "tier-new" not in p.log_text()
    finally:
        for s in sims.values():
            s.stop()
