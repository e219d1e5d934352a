"""`tierguard tune`: thresholds raised from review labels, bounded per run, never lowered."""

from __future__ import annotations

import random

import pytest
import yaml

from tierguard.cli import main as cli_main
from tierguard.policy import load_policy_spec
from tierguard.review.store import Item, open_store
from tierguard.review.tune import Label, tune_tier

POLICY = """\
apiVersion: tierguard.io/v1alpha1
kind: CascadePolicy
metadata:
  name: shop
spec:
  tiers:
    - name: small
      baseUrl: http://small:8000/v1
      model: s
      confidence: {threshold: 0.6}
    - name: big
      baseUrl: http://big:8000/v1
      model: b
"""


def population(n, seed=1, p=0.1):
    """Accepted answers above 0.6 whose accuracy equals their confidence (calibrated)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = rng.uniform(0.6, 1.0)
        out.append(Label(c, rng.random() < c, p))
    return out


def test_a_threshold_that_meets_the_target_is_kept():
    ch = tune_tier("small", population(2000), 0.6, 0.7)
    assert (ch.reason, ch.new_threshold) == ("kept", 0.6)
    assert 0.75 < ch.accuracy < 0.85 and ch.lower_bound < ch.accuracy


def test_a_missed_target_raises_the_threshold_to_the_first_that_meets_it():
    ch = tune_tier("small", population(4000), 0.6, 0.82, max_step=0.2)
    assert ch.reason == "raised"
    assert 0.63 < ch.new_threshold < 0.75  # accepted answers above t' average (t' + 1) / 2 >= 0.82 + margin


def test_the_change_per_run_is_bounded_and_thresholds_never_fall():
    ch = tune_tier("small", population(4000), 0.6, 0.95, max_step=0.05)
    assert (ch.reason, ch.new_threshold) == ("raised_max_step", 0.65)
    ch = tune_tier("small", population(4000), 0.6, 0.1)
    assert ch.new_threshold == 0.6


def test_too_few_labels_change_nothing():
    ch = tune_tier("small", population(20), 0.6, 0.99)
    assert (ch.reason, ch.new_threshold) == ("too_few_labels", 0.6)


def test_weights_matter():
    """Wrong answers sampled at p=0.01 stand for 10x more answers than right ones at p=0.1."""
    labels = [Label(0.9, True, 0.1)] * 100 + [Label(0.9, False, 0.01)] * 20
    unweighted = tune_tier("s", [Label(lb.confidence, lb.correct, 0.1) for lb in labels], 0.6, 0.7)
    weighted = tune_tier("s", labels, 0.6, 0.7)
    assert unweighted.reason == "kept" and weighted.reason != "kept"
    assert weighted.accuracy == pytest.approx(1000 / 3000)


def test_cli_writes_a_tuned_policy(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    url = f"sqlite:{tmp_path / 'r.db'}"
    store = open_store(url)
    rng = random.Random(3)
    items = []
    for i in range(1500):
        c = rng.uniform(0.6, 1.0)
        items.append((Item(f"s{i}", 1.0, "shop", "r1", "small", "b", c, 0.1, 0.1, "q", "a", 0, 0, "h"), rng.random() < c - 0.1))
    for i in range(300):
        items.append((Item(f"b{i}", 1.0, "shop", "r1", "big", "none", None, 0.1, 0.1, "q", "a", 0, 0, "h"), rng.random() < 0.9))
    store.add_items([it for it, _ in items])
    for it, ok in items:
        store.set_label(it.id, "correct" if ok else "incorrect", "", "bob")
    store.close()
    out = tmp_path / "tuned.yaml"
    assert cli_main(["tune", "--store", url, "--policy", str(policy), "--out", str(out), "--max-accuracy-drop", "0.1"]) == 0
    err = capsys.readouterr().err
    assert "small: 1500 labels" in err and "0.6 -> 0.65" in err
    _, spec = load_policy_spec(out)
    assert spec.tiers[0].confidence.threshold == 0.65
    assert yaml.safe_load(out.read_text())["metadata"]["name"] == "shop"
    assert out.read_text().startswith("# written by tierguard tune")
    assert cli_main(["tune", "--store", url, "--policy", str(policy), "--out", str(out), "--policy-name", "other"]) == 2
    assert "no labelled review items" in capsys.readouterr().err
