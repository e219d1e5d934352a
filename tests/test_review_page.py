"""`tierguard review serve`: the API's errors, and the page in a real headless Chromium: a reviewer
signs in, labels items with the keyboard, and the labels reach the store and /metrics."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

import needs
from cdp import Browser
from procs import start_review
from tierguard.cli import main as cli_main
from tierguard.review.estimate import SampledItem, estimates
from tierguard.review.store import Item, StratumRow, open_store

TOKEN = "alice-token-0123456789"


def _item(i, tier, band, p, **kw):
    return Item(
        id=f"chatcmpl-{tier}-{i}", ts=1_800_000_000 + i, policy="pol", revision="r1", tier=tier, band=band,
        confidence=0.3 if tier == "cheap" else None, novelty=0.9, probability=p,
        prompt=f"Question {i}: what is {i} + {i}?", answer=str(2 * i + (i % 2)), cost_usd=0.0001,
        counterfactual_usd=0.001 if tier == "cheap" else 0.0, config_hash="h", **kw,
    )


@pytest.fixture
def review(tmp_path):
    url = f"sqlite:{tmp_path / 'review.db'}"
    store = open_store(url)
    cheap = [_item(i, "cheap", "0-0.5", 0.1) for i in range(43)]
    capable = [_item(i, "capable", "none", 0.01) for i in range(200)]
    store.add_items(cheap + capable)
    for i in range(40):  # the cheap tier's low band: half wrong
        store.set_label(cheap[i].id, "correct" if i % 2 else "incorrect", "", "bob")
    for it in capable:  # the capable tier: all right, and 10x the weight
        store.set_label(it.id, "correct", "", "bob")
    # the proxy counted 430 cheap answers with a mean calibrated confidence of 0.4 (the sampled
    # ones had 0.3), and capable answers without a confidence
    store.add_strata([StratumRow(500_000, "pol", "r1", "cheap", "0-0.5", 430, 43, 0.4 * 430, 430)])
    store.add_strata([StratumRow(500_000, "pol", "r1", "capable", "none", 20_000, 200)])
    store.close()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# reviewers\nalice:{TOKEN}\nbob:bob-token-0123456789\n")
    with start_review(url, tokens, cost_per_wrong=0.05, log_dir=tmp_path) as proc:
        yield proc, url


def _post(url, body, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _metric(text, name, **labels):
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(sel)}}} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def test_writes_need_a_token_and_bad_labels_get_clear_errors(review):
    proc, url = review
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-cheap-40", "label": "correct"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-cheap-40", "label": "correct"}, "wrong-token-0123456789")
    assert status == 401
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-cheap-40", "label": "meh"}, TOKEN)
    assert status == 400 and body["error"]["param"] == "label"
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-nope", "label": "correct"}, TOKEN)
    assert status == 404 and body["error"]["code"] == "unknown_item"
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-cheap-40", "label": "correct", "note": "x" * 5000}, TOKEN)
    assert status == 400 and body["error"]["param"] == "note"
    store = open_store(url)
    assert {r.item.id: r.label for r in store.items()}["chatcmpl-cheap-40"] is None  # nothing stored
    status, body = _post(f"{proc.base}/api/labels", {"item": "chatcmpl-cheap-40", "label": "skip"}, TOKEN)
    assert status == 200 and body["reviewer"] == "alice"


def test_bad_token_file_and_store_are_clear_errors(tmp_path, capsys):
    tokens = tmp_path / "t"
    tokens.write_text("alice:short\n")
    assert cli_main(["review", "serve", "--store", f"sqlite:{tmp_path / 'r.db'}", "--tokens", str(tokens)]) == 2
    assert "shorter than 16" in capsys.readouterr().err
    tokens.write_text(f"alice:{TOKEN}\n")
    assert cli_main(["review", "serve", "--store", "mysql://x", "--tokens", str(tokens)]) == 2
    assert "use sqlite:PATH" in capsys.readouterr().err
    assert cli_main(["review", "serve", "--store", "sqlite:x.db", "--tokens", str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_reviewer_labels_with_the_keyboard_in_chromium(review, tmp_path):
    binary = needs.chromium()
    proc, url = review
    with urllib.request.urlopen(f"{proc.base}/metrics") as r:
        before = r.read().decode()
    assert _metric(before, "tierguard_review_labels", policy="pol", revision="r1", tier="cheap") == 40

    with Browser(binary) as b:
        b.open(proc.base + "/")
        b.wait_for("document.body.dataset.ready === '1'")
        # aggregate green, tier red: the cheap tier's row is marked, the aggregate's is not
        assert b.wait_for("document.querySelector('tr[data-tier=\"cheap\"]') !== null")
        assert b.eval("document.querySelector('tr[data-tier=\"cheap\"]').className") == "worse"
        assert b.eval("document.querySelector('tr[data-tier=\"*\"]').className") == "aggregate"
        assert b.eval("document.querySelectorAll('#plot circle').length") == 3
        # model-assisted: 0.4 + the mean residual of 20 right (+0.7) and 20 wrong (-0.3) = 0.6;
        # none for the capable tier (no confidences) and so none for the aggregate
        cells = "Array.from(document.querySelectorAll('tr[data-tier=\"%s\"] td.diff')).map(c => c.textContent)"
        assert b.eval(cells % "cheap") == ["0.600"]
        assert b.eval(cells % "capable") == ["\u2013"] and b.eval(cells % "*") == ["\u2013"]
        # the first stratum with unlabelled items is shown
        first = b.wait_for("document.body.dataset.item")
        assert first == "chatcmpl-cheap-40"
        assert "Question 40" in b.eval("document.getElementById('prompt').textContent")

        b.key("c")  # not signed in yet: nothing is written
        b.wait_for("document.getElementById('status').textContent.includes('sign in')")

        b.eval("document.getElementById('token').focus()")
        b.type_text(TOKEN)
        b.key("Enter")
        b.wait_for("document.getElementById('who').textContent === 'signed in'")

        b.key("n")
        assert b.eval("document.activeElement.id") == "note"
        b.type_text("the sum is wrong")
        b.key("x")  # typed into the note, not a shortcut
        assert b.eval("document.getElementById('note').value") == "the sum is wrongx"
        b.eval("document.getElementById('note').value = 'the sum is wrong'")
        b.key("Escape")
        b.key("x")
        b.wait_for("document.body.dataset.labelled === '1'")
        assert b.eval("document.body.dataset.item") == "chatcmpl-cheap-41"
        b.key("c")
        b.wait_for("document.body.dataset.labelled === '2'")
        b.key("s")
        b.wait_for("document.body.dataset.labelled === '3'")
        b.wait_for("document.getElementById('meta').textContent.includes('no unlabelled items')")
        b.screenshot(tmp_path / "review.png")

    store = open_store(url)
    rows = {r.item.id: r for r in store.items()}
    assert (rows["chatcmpl-cheap-40"].label, rows["chatcmpl-cheap-40"].note, rows["chatcmpl-cheap-40"].reviewer) == (
        "incorrect", "the sum is wrong", "alice")
    assert (rows["chatcmpl-cheap-41"].label, rows["chatcmpl-cheap-41"].reviewer) == ("correct", "alice")
    assert rows["chatcmpl-cheap-42"].label == "skip"
    assert rows["chatcmpl-capable-0"].reviewer == "bob"  # untouched

    expected = {
        e.tier: e
        for e in estimates(SampledItem(r.item.revision, r.item.tier, r.item.probability, r.label) for r in rows.values())
    }
    with urllib.request.urlopen(f"{proc.base}/metrics") as r:
        after = r.read().decode()
    assert _metric(after, "tierguard_review_labels", policy="pol", revision="r1", tier="cheap") == 42
    acc = _metric(after, "tierguard_review_accuracy", policy="pol", revision="r1", tier="cheap")
    assert acc == pytest.approx(expected["cheap"].accuracy) and acc == pytest.approx(21 / 42)
    low = _metric(after, "tierguard_review_accuracy_lower", policy="pol", revision="r1", tier="*")
    assert low == pytest.approx(expected["*"].lo)
    assert _metric(after, "tierguard_review_accuracy", policy="pol", revision="r1", tier="capable") == 1.0
    # after labelling 41 (wrong) and 42 (right): 21 right, 21 wrong at confidence 0.3 -> 0.4 + 0.2
    diff = _metric(after, "tierguard_review_accuracy_difference", policy="pol", revision="r1", tier="cheap")
    assert diff == pytest.approx(0.6)
    assert _metric(after, "tierguard_review_accuracy_difference_lower", policy="pol", revision="r1", tier="cheap") < 0.6
    assert _metric(after, "tierguard_review_accuracy_difference", policy="pol", revision="r1", tier="capable") is None
    with urllib.request.urlopen(f"{proc.base}/api/quality") as r:
        q = json.load(r)
    cheap = next(e for e in q["policies"]["pol"] if e["tier"] == "cheap")
    # net value: 430 answers saved $0.0009 each, minus half of them wrong at $0.05
    assert cheap["net_value_usd"] == pytest.approx(430 * 0.0009 - 430 * 0.5 * 0.05)
