"""Per-tier quality from the review store: the estimates the page shows and ``/metrics`` exports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import metric_names as m
from .estimate import Estimate, Population, SampledItem, estimates
from .store import Store, StratumRow


@dataclass(frozen=True)
class QualitySettings:
    confidence: float = 0.95
    cost_per_wrong: float = 0.0
    cost_per_handoff: float = 0.0
    handoff_event: str = "human_handoff"


def populations(rows: Iterable[StratumRow]) -> dict[str, dict[tuple[str, str], Population]]:
    """Per policy and (revision, tier): every answer's calibrated confidence, summed from the hourly
    stratum counts. A tier is left out when some of its counted answers have no confidence sum
    (hours written before schema 3, or a tier without confidences): its difference estimate would
    not cover the same answers as its sample."""
    acc: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        a = acc.setdefault((r.policy, r.revision, r.tier), [0, 0, 0.0])
        a[0] += r.seen
        a[1] += r.confidence_n
        a[2] += r.confidence_sum
    out: dict[str, dict[tuple[str, str], Population]] = {}
    for (policy, revision, tier), (seen, n, total) in acc.items():
        if n > 0 and n == seen:
            out.setdefault(policy, {})[(revision, tier)] = Population(int(n), total)
    return out


def policy_quality(store: Store, settings: QualitySettings) -> dict[str, list[Estimate]]:
    """Estimates per policy in the store."""
    by_policy: dict[str, list[SampledItem]] = {}
    for row in store.items(limit=1_000_000):
        it = row.item
        by_policy.setdefault(it.policy, []).append(
            SampledItem(
                it.revision,
                it.tier,
                it.probability,
                row.label,
                it.counterfactual_usd - it.cost_usd,
                it.confidence,
            )
        )
    pops = populations(store.strata())
    handoffs: dict[str, dict[tuple[str, str], int]] = {}
    for ev in store.events():
        if ev.name == settings.handoff_event and ev.value > 0:
            h = handoffs.setdefault(ev.policy, {})
            h[(ev.revision, ev.tier)] = h.get((ev.revision, ev.tier), 0) + 1
    return {
        policy: estimates(
            items,
            confidence=settings.confidence,
            handoffs=handoffs.get(policy),
            cost_per_wrong=settings.cost_per_wrong,
            cost_per_handoff=settings.cost_per_handoff,
            populations=pops.get(policy),
        )
        for policy, items in by_policy.items()
    }


class QualityCollector(Collector):
    """Exports the estimates at scrape time: ``tierguard_review_accuracy`` (and its lower bound,
    and the number of labels) per policy, revision and tier; the revision's aggregate has
    ``tier="*"``. A group without labels exports nothing (no data, not a made-up number)."""

    def __init__(self, store: Store, settings: QualitySettings) -> None:
        self.store = store
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["policy", "revision", "tier"]
        acc = GaugeMetricFamily(
            m.REVIEW_ACCURACY, "Inclusion-weighted accuracy from review labels", labels=labels
        )
        low = GaugeMetricFamily(
            m.REVIEW_ACCURACY_LOW, "Lower bound of the accuracy's confidence interval", labels=labels
        )
        n = GaugeMetricFamily(m.REVIEW_LABELS, "Review labels (correct or incorrect)", labels=labels)
        dacc = GaugeMetricFamily(
            m.REVIEW_ACCURACY_DIFFERENCE,
            "Model-assisted accuracy: mean calibrated confidence of every answer plus the "
            "inclusion-weighted mean residual (label - confidence) of the review sample",
            labels=labels,
        )
        dlow = GaugeMetricFamily(
            m.REVIEW_ACCURACY_DIFFERENCE_LOW, "Lower bound of the model-assisted accuracy", labels=labels
        )
        for policy, ests in policy_quality(self.store, self.settings).items():
            for e in ests:
                if e.accuracy is None or e.lo is None:
                    continue
                key = [policy, e.revision, e.tier]
                acc.add_metric(key, e.accuracy)
                low.add_metric(key, e.lo)
                n.add_metric(key, e.labels)
                if e.difference is not None:
                    dacc.add_metric(key, e.difference.accuracy)
                    dlow.add_metric(key, e.difference.lo)
        yield from (acc, low, n, dacc, dlow)
