"""Review sampling and outcome events in real proxy processes (two replicas sharing one store)
against real `tierguard sim` processes, read back by `tierguard review serve`."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from procs import start_proxy, start_review, start_sim, write_outcomes
from test_proxy import MODELS, cascade, chat, metric, row, write_policy
from tierguard.cli import main as cli_main
from tierguard.review.store import open_store

PII = "Mail jane.doe@example.com or call +1 415 555 2671 about the easy question"
ROWS = [
    row("easy", "easy question", (0.95, 0.9, 0.9)),
    row("hard", "hard question", (0.3, 0.4, 0.9)),
    row("pii", PII, (0.95, 0.9, 0.9), answers={m: "card 4111 1111 1111 1111" for m in MODELS}),
    row("mid", "middle question", (0.3, 0.9, 0.9), answers={"cheap": "X", "mid": "Y", "big": " y "}),
]
KEY = {"TIERGUARD_FEEDBACK_KEY": "shared-review-key"}
TOKEN = "carol-token-0123456789"


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    path = write_outcomes(tmp_path_factory.mktemp("data") / "o.jsonl", ROWS)
    procs = {m: start_sim(path, m, latency_scale=0) for m in MODELS}
    yield procs
    for p in procs.values():
        p.stop()


def review_policy(sims, store, **review):
    spec = cascade(sims)
    spec["proxy"] = {"review": {"rate": 1.0, "quotaPerHour": 100000, "store": store, **review}}
    return spec


def wait_rows(url, read, n, what, timeout=10.0):
    """``read(store)``'s rows once there are at least ``n``."""
    deadline = time.time() + timeout
    rows = []
    while time.time() < deadline:
        s = open_store(url)
        rows = read(s)
        s.close()
        if len(rows) >= n:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{len(rows)} {what} stored, expected {n}")


def wait_items(url, n):
    return wait_rows(url, lambda s: s.items(), n, "items")


def test_two_replicas_sample_into_one_store_and_outcomes_are_joined_once(sims, tmp_path):
    url = f"sqlite:{tmp_path / 'review.db'}"
    policy = write_policy(tmp_path / "p.yaml", review_policy(sims, url))
    with start_proxy(policy, env=KEY, decision_log="off") as a, start_proxy(policy, env=KEY, decision_log="off") as b:
        ids = {}
        for proxy, prompt in ((a, "easy question"), (b, "hard question"), (a, PII)):
            r = httpx.post(f"{proxy.base}/v1/chat/completions", json=chat(prompt), timeout=30)
            assert r.status_code == 200
            ids[prompt] = (r.json()["id"], r.headers["x-tierguard-tier"])
        with httpx.stream("POST", f"{b.base}/v1/chat/completions", json=chat("hard question", stream=True), timeout=30) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        streamed_id = chunks[0]["id"]
        items = {it.item.id: it.item for it in wait_items(url, 4)}
        streamed = items[streamed_id]
        assert streamed.tier == "big" and streamed.answer == "big-hard"  # a streamed answer, joined whole
        easy = items[ids["easy question"][0]]
        assert (easy.tier, easy.revision, easy.probability, easy.policy) == ("cheap", easy.revision, 1.0, "unit")
        assert easy.band == "0.95-1" and easy.prompt == "easy question"
        hard = items[ids["hard question"][0]]
        assert hard.tier == "big" and hard.band == "0.8-0.95"
        pii = items[ids[PII][0]]
        assert "jane" not in pii.prompt and "[email]" in pii.prompt and "[phone]" in pii.prompt
        assert pii.answer == "card [card]"
        assert metric(a, "tierguard_review_sampled_total", tier="cheap") == 2

        # outcome events: a batch on replica a (one bad item), the same event again on replica b
        easy_id = ids["easy question"][0]
        r = httpx.post(f"{a.base}/v1/outcomes", json={"events": [
            {"id": easy_id, "event": "rating", "value": 2},
            {"id": easy_id, "event": "refund", "value": 30},
            {"id": easy_id, "event": "nps", "value": 3},
        ]})
        assert r.status_code == 207, r.text
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted", "rejected"]
        r = httpx.post(f"{b.base}/v1/outcomes", json={"id": easy_id, "event": "rating", "value": 5})
        assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate"
        r = httpx.post(f"{b.base}/v1/outcomes", json={"id": "chatcmpl-forged", "event": "rating", "value": 5})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert metric(a, "tierguard_outcome_events_total", tier="cheap", event="refund") == 1
        assert metric(a, "tierguard_outcome_value_total", tier="cheap", event="refund") == 30
        assert metric(b, "tierguard_outcome_rejected_total", reason="duplicate") == 1

    tokens = tmp_path / "tokens"
    tokens.write_text(f"carol:{TOKEN}\n")
    with start_review(url, tokens, log_dir=tmp_path) as page:
        listed = httpx.get(f"{page.base}/api/items", params={"tier": "cheap"}).json()["items"]
        assert {i["id"] for i in listed} == {easy_id, ids[PII][0]}
        for item_id in (easy_id, ids[PII][0]):
            r = httpx.post(f"{page.base}/api/labels", json={"item": item_id, "label": "correct"},
                           headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
        text = httpx.get(f"{page.base}/metrics").text
        assert f'tierguard_review_accuracy{{policy="unit",revision="{easy.revision}",tier="cheap"}} 1.0' in text
        events = open_store(url).events()
        assert sorted(e.name for e in events) == ["rating", "refund"]


def test_a_store_that_is_down_never_fails_a_request(sims, tmp_path):
    (tmp_path / "store-dir").mkdir()
    url = f"sqlite:{tmp_path / 'store-dir'}"  # a directory: the store cannot be opened
    policy = write_policy(tmp_path / "p.yaml", review_policy(sims, url))
    with start_proxy(policy, env=KEY, decision_log="off") as p:
        for _ in range(5):
            r = httpx.post(f"{p.base}/v1/chat/completions", json=chat("easy question"), timeout=30)
            assert r.status_code == 200
        deadline = time.time() + 10
        while time.time() < deadline and metric(p, "tierguard_review_dropped_total", reason="store_error") < 5:
            time.sleep(0.1)
        assert metric(p, "tierguard_review_dropped_total", reason="store_error") == 5
        r = httpx.post(f"{p.base}/v1/outcomes", json={"id": r.json()["id"], "event": "rating", "value": 3})
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"


def test_a_bad_novelty_reference_is_an_invalid_config(sims, tmp_path):
    policy = write_policy(
        tmp_path / "p.yaml", review_policy(sims, f"sqlite:{tmp_path / 'r.db'}", noveltyReference=str(tmp_path / "none.json"))
    )
    with pytest.raises(RuntimeError) as err:
        start_proxy(policy, env=KEY, decision_log="off", timeout=10)
    assert "none.json" in str(err.value) and "Traceback" not in str(err.value)


def test_shadow_and_escalation_comparisons_reach_the_store_for_tune(sims, tmp_path, capsys):
    """Shadow results (the accepted answer, and an earlier tier's escalated one) and the free
    comparisons of a request escalated to the capable tier are stored with the tier's confidence
    and their inclusion probability; `tierguard tune` reads them."""
    url = f"sqlite:{tmp_path / 'review.db'}"
    spec = review_policy(sims, url, rate=0.0)
    spec["proxy"]["shadowRate"] = 1.0
    policy = write_policy(tmp_path / "p.yaml", spec)
    with start_proxy(policy, env=KEY, decision_log="off") as p:
        ids = {}
        for prompt in ("easy question", "hard question", "middle question"):
            r = httpx.post(f"{p.base}/v1/chat/completions", json=chat(prompt), timeout=30)
            assert r.status_code == 200
            ids[prompt] = r.json()["id"]
        rows = wait_rows(url, lambda s: s.shadow_results(), 5, "comparisons")
    by = {(r.response_id, r.tier): r for r in rows}
    assert len(rows) == 5 and all(r.probability == 1.0 and r.policy == "unit" for r in rows)
    easy = by[(ids["easy question"], "cheap")]  # accepted, shadowed: cheap-easy vs big-easy
    assert (easy.source, easy.answered, easy.agree) == ("shadow", "cheap", False)
    assert easy.confidence == pytest.approx(0.95) and easy.raw_confidence == pytest.approx(0.95)
    assert easy.cost_usd > 0  # the shadow call was paid for
    for tier, conf in (("cheap", 0.3), ("mid", 0.4)):  # escalated to big: free comparisons
        esc = by[(ids["hard question"], tier)]
        assert (esc.source, esc.answered, esc.agree, esc.cost_usd) == ("escalation", "big", False, 0.0)
        assert esc.confidence == pytest.approx(conf)
    served = by[(ids["middle question"], "mid")]  # accepted by mid, shadowed; cheap's answer too
    assert (served.source, served.answered, served.agree) == ("shadow", "mid", True)
    earlier = by[(ids["middle question"], "cheap")]
    assert (earlier.answered, earlier.agree, earlier.cost_usd) == ("mid", False, 0.0)
    assert not any(r.response_id == "" for r in rows)

    capsys.readouterr()
    assert cli_main(["tune", "--store", url, "--policy", str(policy), "--out", str(tmp_path / "t.yaml")]) == 3
    err = capsys.readouterr().err
    assert "5 comparisons with the capable tier (3 shadow, 2 escalation)" in err
    assert "too few rows: 3 sampled requests" in err and "Traceback" not in err
