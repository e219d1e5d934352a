"""Review sampling's pure parts: redaction, novelty, the stratified sampler, Horvitz-Thompson estimates."""

from __future__ import annotations

import random

import pytest

from tierguard.policy import ReviewSpec
from tierguard.review.estimate import ALL, SampledItem, estimates, wilson
from tierguard.review.novelty import NoveltyReference
from tierguard.review.observer import prompt_text
from tierguard.review.redact import luhn_ok, redact
from tierguard.review.sampling import HOUR, Sampler, band_names, band_of, novelty_weight

# --- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to jane.doe+tag@mail.example.co.uk today", "write to [email] today"),
        ("card 4111 1111 1111 1111 please", "card [card] please"),
        ("card 5555-5555-5555-4444.", "card [card]."),
        ("call +1 (415) 555-2671 now", "call [phone] now"),
        ("or 030 1234567", "or [phone]"),
        # not card numbers (Luhn fails) and too long for a phone: kept whole, never half-redacted
        ("order 4111-1111-1111-1112", "order 4111-1111-1111-1112"),
        ("Question: 1234 + 5678 = ? in 2024, pi 3.14159", "Question: 1234 + 5678 = ? in 2024, pi 3.14159"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


# --- novelty -----------------------------------------------------------------------------------

ANIMALS = [f"what does the {a} eat in the {s}?" for a in ("cat", "dog", "cow", "horse", "goat") for s in ("winter", "summer", "morning", "evening")]


def test_novelty_ranks_unfamiliar_queries_high_and_familiar_ones_low():
    ref = NoveltyReference.build(ANIMALS)
    familiar = ref.novelty("what does the dog eat in the evening?")
    strange = ref.novelty("derive the eigenvalues of a hermitian operator")
    assert strange == 1.0
    assert familiar < 0.5
    assert ref.novelty("") == 0.0


def test_novelty_is_roughly_uniform_on_in_distribution_prompts():
    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    prompts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
    ref = NoveltyReference.build(prompts[:1000])
    scores = sorted(ref.novelty(p) for p in prompts[1000:])
    assert 0.35 < scores[len(scores) // 2] < 0.65  # median near 1/2: fresh draws from the same source


def test_novelty_reference_round_trips_and_rejects_bad_files(tmp_path):
    ref = NoveltyReference.build(ANIMALS, meta={"source": "animals"})
    path = tmp_path / "ref.json"
    ref.save(path)
    back = NoveltyReference.load(path)
    assert back.novelty("what does the cat eat?") == ref.novelty("what does the cat eat?")
    assert back.meta == {"source": "animals"}
    path.write_text('{"kind": "NoveltyReference", "version": 1, "buckets": 12}')
    with pytest.raises(ValueError, match="buckets"):
        NoveltyReference.load(path)
    path.write_text("nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        NoveltyReference.load(path)
    with pytest.raises(ValueError, match="at least one"):
        NoveltyReference.build([])


# --- the sampler -------------------------------------------------------------------------------


def test_bands():
    assert band_names([0.5, 0.8]) == ["0-0.5", "0.5-0.8", "0.8-1"]
    assert [band_of(c, [0.5, 0.8]) for c in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0, None)] == [0, 0, 1, 1, 2, 2, None]
    assert novelty_weight(0.2, 5) == 1.0 and novelty_weight(1.0, 5) == 5.0 and novelty_weight(0.75, 5) == 3.0


def test_spec_validation():
    with pytest.raises(ValueError, match="bandWeights needs 3"):
        ReviewSpec(band_edges=[0.3, 0.6], band_weights=[1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        ReviewSpec(band_edges=[0.6, 0.3], band_weights=[1, 2, 3])
    with pytest.raises(ValueError, match="sqlite:PATH or a postgresql"):
        ReviewSpec(store="mysql://x")


def _run(spec, n, per_hour, conf, novelty=0.0, seed=1, start=0.0):
    s = Sampler(spec, random.Random(seed))
    draws = []
    for i in range(n):
        now = start + i * HOUR / per_hour
        draws.append(s.draw("r1", "cheap", conf(i), novelty, now))
    return s, draws


def test_low_confidence_and_novel_queries_are_oversampled_with_recorded_probabilities():
    spec = ReviewSpec(rate=0.01, quota_per_hour=10_000)
    _, low = _run(spec, 20000, 2000, lambda i: 0.3)
    _, high = _run(spec, 20000, 2000, lambda i: 0.99)
    _, novel = _run(spec, 20000, 2000, lambda i: 0.99, novelty=1.0)
    rate = lambda ds: sum(d.sampled for d in ds) / len(ds)  # noqa: E731
    assert {d.probability for d in low} == {0.08} and {d.probability for d in high} == {0.01}
    assert {d.probability for d in novel} == {0.05}
    assert 0.07 < rate(low) < 0.09 and 0.007 < rate(high) < 0.013 and 0.04 < rate(novel) < 0.06
    assert low[0].stratum.band == "0-0.5" and high[0].stratum.band == "0.95-1"


def test_hourly_quota_scales_the_probability_and_keeps_the_expected_count_within_it():
    # 2000 answers an hour at target 0.08 would give 160 items; the quota is 20
    spec = ReviewSpec(rate=0.01, quota_per_hour=20)
    _, draws = _run(spec, 2000 * 6, 2000, lambda i: 0.3)
    per_hour = [sum(d.sampled for d in draws[h * 2000 : (h + 1) * 2000]) for h in range(6)]
    assert all(n <= 40 for n in per_hour)  # the hard cap
    assert 12 <= sum(per_hour[1:]) / 5 <= 28  # about the quota once a full hour is known
    # from the second hour on, every draw has the target 0.08 scaled by 20 / (2000 * 0.08)
    assert {round(d.probability, 6) for d in draws[2000:]} == {0.01}
    # inverse-probability weights recover the traffic
    total = sum(1 / d.probability for d in draws[2000:] if d.sampled)
    assert abs(total - 10000) / 10000 < 0.25


def test_hard_cap_counts_quota_draws():
    spec = ReviewSpec(rate=1.0, band_weights=[1, 1, 1, 1], quota_per_hour=5)
    s = Sampler(spec, random.Random(1))
    first = s.draw("r", "t", 0.3, 0.0, 0.0)
    # the first hour extrapolates from at least a minute: 1 answer in a minute is 60 an hour
    assert first.probability == pytest.approx(5 / 60)
    for i in range(1, 5):  # hour 0: 5 answers in all
        s.draw("r", "t", 0.3, 0.0, 600.0 * i)
    burst = [s.draw("r", "t", 0.3, 0.0, HOUR + i) for i in range(200)]  # hour 1: a burst of 200
    assert {d.probability for d in burst} == {1.0}  # last hour's 5 answers fit the quota
    assert sum(d.sampled for d in burst) == 10  # twice the quota, then the hard cap
    assert sum(d.reason == "quota" for d in burst) == 190


def test_counts_per_hour_and_stratum_are_drained_once():
    s, draws = _run(ReviewSpec(rate=0.5), 30, 10, lambda i: 0.3 if i % 2 else 0.99)
    counts = s.drain_counts()
    assert sum(c.seen for c in counts) == 30
    assert sum(c.sampled for c in counts) == sum(d.sampled for d in draws)
    assert {c.hour for c in counts} == {0, 1, 2}
    assert s.drain_counts() == []


def test_prompt_text():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]
    assert prompt_text(msgs) == "hi"
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a"
    assert prompt_text(None) == ""


# --- estimates ---------------------------------------------------------------------------------


def test_horvitz_thompson_recovers_per_tier_accuracy_under_unequal_sampling():
    """A population where the cheap tier's low-confidence answers are often wrong; sampled 10*
    more often than the rest. The unweighted label mean is biased; the weighted one is not."""
    rng = random.Random(7)
    items, truth = [], {"cheap": [0, 0], "capable": [0, 0]}
    for _ in range(200_000):
        tier = "cheap" if rng.random() < 0.7 else "capable"
        low = rng.random() < 0.2
        correct = rng.random() < (0.5 if (tier == "cheap" and low) else 0.95)
        truth[tier][0] += correct
        truth[tier][1] += 1
        p = 0.05 if low else 0.005
        if rng.random() < p:
            items.append(SampledItem("r1", tier, p, "correct" if correct else "incorrect"))
    est = {e.tier: e for e in estimates(items)}
    for tier in ("cheap", "capable"):
        true_acc = truth[tier][0] / truth[tier][1]
        e = est[tier]
        assert e.lo <= true_acc <= e.hi
        assert abs(e.accuracy - true_acc) < 0.03
        assert abs(e.answers - truth[tier][1]) / truth[tier][1] < 0.1
    cheap = [i for i in items if i.tier == "cheap"]
    naive = sum(i.label == "correct" for i in cheap) / len(cheap)
    assert naive < est["cheap"].accuracy - 0.05  # oversampled hard cases drag the naive mean down
    assert est[ALL].labels == len(items)


def test_interval_coverage_over_repeated_samples():
    rng = random.Random(11)
    true_acc, covered, runs = 0.9, 0, 200
    for _ in range(runs):
        items = [
            SampledItem("r", "t", p, "correct" if rng.random() < true_acc else "incorrect")
            for p in (0.02, 0.1)
            for _ in range(40)
        ]
        e = estimates(items)[0]
        covered += e.lo <= true_acc <= e.hi
    assert covered / runs >= 0.9


def test_skips_and_unlabelled_items_count_as_answers_not_labels_and_net_value():
    items = [
        SampledItem("r", "cheap", 0.1, "correct", savings_usd=0.01),
        SampledItem("r", "cheap", 0.1, "incorrect", savings_usd=0.01),
        SampledItem("r", "cheap", 0.1, "skip", savings_usd=0.01),
        SampledItem("r", "cheap", 0.1, None, savings_usd=0.01),
    ]
    e = estimates(items, handoffs={("r", "cheap"): 2}, cost_per_wrong=0.05, cost_per_handoff=1.0)[0]
    assert e.labels == 2 and e.accuracy == 0.5 and e.answers == pytest.approx(40)
    assert e.savings_usd == pytest.approx(0.4)
    # 40 answers * 50% wrong * $0.05 + 2 handoffs * $1
    assert e.net_value_usd == pytest.approx(0.4 - 1.0 - 2.0)
    none = estimates([SampledItem("r", "cheap", 0.1, None)])[0]
    assert none.accuracy is None and none.lo is None


def test_wilson_stays_in_range():
    assert wilson(1.0, 10, 1.96)[1] == 1.0 and wilson(1.0, 10, 1.96)[0] < 1.0
    assert wilson(0.5, 0, 1.96) == (0.0, 1.0)


def test_lazy_novelty_is_computed_only_when_the_draw_could_select_and_keeps_probabilities():
    spec = ReviewSpec(rate=0.01, quota_per_hour=1_000_000)  # top band: base 0.01, at most 0.05
    calls = []

    def score():
        calls.append(1)
        return 1.0

    s = Sampler(spec, random.Random(5))
    draws = [s.draw("r", "t", 0.99, score, i * 0.1) for i in range(40000)]
    assert 0.04 < len(calls) / len(draws) < 0.06  # scored on ~p_max of the answers
    sampled = [d for d in draws if d.sampled]
    assert {d.probability for d in sampled} == {0.05} and all(d.novelty == 1.0 for d in sampled)
    assert 0.04 < len(sampled) / len(draws) < 0.06  # the same rate as with the score given up front
    familiar = Sampler(spec, random.Random(6))
    draws = [familiar.draw("r", "t", 0.99, lambda: 0.0, i * 0.1) for i in range(40000)]
    sampled = [d for d in draws if d.sampled]
    assert {d.probability for d in sampled} == {0.01} and 0.008 < len(sampled) / len(draws) < 0.012
