"""Thresholds tuned from production evidence, with a guarantee: the pure decision.

:func:`tune` takes the current policy and the evidence the proxies stored, and returns the new
policy and a report (:class:`Tuning`). No I/O: ``tierguard tune`` (:mod:`.tune_cmd`) reads the
store and writes the file; a closed-loop replay can call it on simulated evidence.

**The evidence.** A *comparison* is one cheaper tier's answer to one request next to the capable
(last) tier's answer to the same request: from a shadow call (the capable tier re-asked after an
accepted cheaper answer; inclusion probability = the shadow rate) or free from an escalated
request (both answers exist; recorded at ``review.escalationRate``, by default the shadow rate).
An answer that cannot be compared (a tool call refused for low confidence, a stream aborted early)
is recorded as a disagreement (:mod:`tierguard.proxy.comparisons`). A request's comparisons (one
per cheaper tier that answered it with a confidence) form an :class:`Evidence` row, with the
reviewer's label of the answer the client got, if any, and whether a configured bad outcome event
was reported for it.

**The quantity** is the one ``tierguard calibrate`` certifies (docs/guarantee.md): the accuracy
gap to the capable tier, ``E[L]`` with ``L = 1[capable correct] - 1[cascade correct]``. A row's
loss under candidate thresholds is bounded from above, conservatively: the request is routed
through its recorded confidences; an answer by the capable tier loses 0; a cheaper tier's answer
that agrees with the capable tier's loses 0 (both right or both wrong); one that disagrees loses
1, unless a reviewer labelled that very answer correct (then the capable one was not better: 0),
and a configured bad outcome on a cheaper answer the client got counts as a loss even when the
two agreed. A tier the request never reached under the policy it ran with (an earlier tier
accepted) has no recorded answer: reaching it costs 1 unless it is the capable tier. So the
row's loss ``U >= L``, and a test of ``E[U] <= eps`` certifies ``E[L] <= eps``.

**Equal inclusion probabilities.** Accepted answers enter the evidence at the shadow rate,
escalated ones at their own rate. The rows are thinned to the smallest inclusion
probability ``q`` among them: a row of probability ``p`` is kept when a uniform number derived
from its response id (SHA-256) is below ``q / p``, which is independent of the answers. The kept
rows are a Bernoulli(``q``) sample of the requests a cheaper tier answered with a confidence, so
they are exchangeable with future such requests whenever the traffic is (the assumption). The
other requests (no cheaper confidence) escalate under any thresholds and lose nothing, so the
guarantee over the rows also holds over all traffic. Rows without a recorded probability (written
before schema version 2) are left out.

**The method: Learn-then-Test**, as in :mod:`tierguard.guarantee`. The path is fixed before the
data are read: a common shift ``d`` of every cheaper tier's calibrated threshold, from
``+max_step`` (most conservative) down to ``-max_step`` in steps of ``step``. Each candidate gets
the exact binomial p-value of ``H0: E[U] > eps`` (the loss bound takes values 0 and 1, so the
trinomial test of :mod:`tierguard.gaptest` reduces to a binomial tail); candidates are tested in
order and testing stops at the first p-value above ``delta``. Every candidate passed is certified
simultaneously (family-wise error at most ``delta``), so choosing the lowest certified thresholds
(the cheapest: a request stops at the same tier or an earlier one) keeps the guarantee, on the same
rows it was selected on. The change per run is at most ``max_step`` by construction. When not even
``+max_step`` is certified, nothing within reach is: the current policy is returned unchanged with
``certified = False`` (the command then writes nothing and says why).

Calibration maps are kept: the evidence says whether a cheaper answer agreed with the capable
one, not whether it was correct, so a map refitted on it would change what a confidence means.
Maps are refitted offline by ``tierguard calibrate`` on labelled outcomes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..gaptest import binom_cdf
from ..guarantee import points
from ..policy import CascadePolicySpec

METHOD = (
    "learn-then-test: fixed-sequence over a common shift of the cheaper tiers' calibrated thresholds "
    "within +-maxStep, exact binomial p-values of a conservative loss bound"
)
ASSUMPTION = (
    "future requests exchangeable with the sampled production requests (equal inclusion probability "
    "after thinning); a reviewer's label is right"
)
DEFAULT_EPS = 0.01
DEFAULT_DELTA = 0.1
DEFAULT_MAX_STEP = 0.05
DEFAULT_STEP = 0.01


class TuneError(ValueError):
    """Inputs tuning cannot work from (the message says why)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """One cheaper tier's answer to a request next to the capable tier's."""

    tier: str
    confidence: float | None  # calibrated, under the policy being tuned (None: no confidence)
    agree: bool


@dataclass(frozen=True, slots=True)
class Evidence:
    """One sampled request: its comparisons (cheaper tiers in cascade order), inclusion
    probability, the tier whose answer the client got, and what was said about that answer."""

    response_id: str
    probability: float
    answered: str
    comparisons: tuple[Comparison, ...]
    label: bool | None = None  # a reviewer's verdict on the answer the client got
    bad_outcome: bool = False  # a configured bad outcome event for this response


@dataclass(frozen=True, slots=True)
class TunePoint:
    shift: float
    thresholds: tuple[float, ...]  # the cheaper tiers' calibrated thresholds
    losses: int  # rows whose loss bound is 1
    shares: tuple[float, ...]  # share of rows each cheaper tier answers
    p_value: float


@dataclass
class Tuning:
    """What :func:`tune` decided, and the guarantee it rests on."""

    spec: CascadePolicySpec  # the policy to write: the input's when nothing is certified
    eps: float
    delta: float
    max_step: float
    n: int  # rows tested on (after thinning)
    rows: int  # rows offered, with a known inclusion probability
    unknown_probability: int  # rows left out: no inclusion probability recorded
    thinned_to: float  # the common inclusion probability of the rows tested on
    data_hash: str
    current: tuple[float, ...]  # the cheaper tiers' thresholds before
    path: list[TunePoint] = field(default_factory=list)
    certified: int = 0
    chosen: TunePoint | None = None
    labels_used: int = 0  # rows whose disagreement a reviewer's label settled
    bad_outcomes: int = 0  # rows with a configured bad outcome
    lowering: bool = True  # whether the path went below the current thresholds

    @property
    def is_certified(self) -> bool:
        return self.chosen is not None

    @property
    def new_thresholds(self) -> tuple[float, ...]:
        return self.current if self.chosen is None else self.chosen.thresholds

    @property
    def changed(self) -> bool:
        return self.new_thresholds != self.current

    def min_rows(self) -> int:
        """Rows needed before anything can be certified (no loss at all): (1 - eps)^n <= delta."""
        return math.ceil(math.log(self.delta) / math.log1p(-self.eps)) if self.eps > 0 else 0

    def why_not(self) -> str:
        """Why nothing was certified ("" when something was)."""
        if self.chosen is not None:
            return ""
        if self.n < self.min_rows():
            return (
                f"too few rows: {self.n} sampled requests, at least {self.min_rows()} are needed to certify "
                f"anything at eps {self.eps:g}, delta {self.delta:g} (raise the shadow rate, or wait)"
            )
        first = self.path[0] if self.path else None
        return (
            f"no thresholds within --max-step {self.max_step:g} of the current ones are certified: even "
            f"{_fmt(first.thresholds) if first else 'the most conservative'} lose "
            f"{first.losses if first else '?'} of {self.n} rows (p = {first.p_value if first else 1:.3f} > "
            f"{self.delta:g}); the current policy is not certified either: raise the thresholds further "
            "(a larger --max-step) or serve the capable tier alone"
        )

    def statement(self) -> str:
        if self.chosen is None:
            return f"Nothing certified: {self.why_not()}."
        return (
            f"With probability at least {1 - self.delta:.0%} over the {self.n} sampled production "
            f"requests, this cascade's accuracy is at most {points(self.eps)} below the capable tier's "
            "on future requests exchangeable with them (Learn-then-Test, exact p-values; disagreement "
            "with the capable tier counted as a loss)."
        )

    def record(self) -> dict[str, Any]:
        """The ``tierguard.io/guarantee`` annotation of the written policy."""
        out: dict[str, Any] = {
            "quantity": "capable accuracy - cascade accuracy",
            "method": METHOD,
            "source": "tierguard tune: production shadow and escalation comparisons, labels, outcomes",
            "eps": self.eps,
            "delta": self.delta,
            "n": self.n,
            "inclusionProbability": self.thinned_to,
            "maxStep": self.max_step,
            "dataSha256": self.data_hash,
            "assumption": ASSUMPTION,
            "certified": self.is_certified,
            "statement": self.statement(),
        }
        if self.chosen is not None:
            out["shift"] = self.chosen.shift
            out["thresholds"] = list(self.chosen.thresholds)
            out["previousThresholds"] = list(self.current)
            out["pValue"] = round(self.chosen.p_value, 6)
            out["losses"] = self.chosen.losses
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.record(), "path": [asdict(p) for p in self.path], "pathCertified": self.certified}


def _fmt(thresholds: Sequence[float]) -> str:
    return "thresholds " + ", ".join(f"{t:.4g}" for t in thresholds)


def shifts(max_step: float, step: float) -> list[float]:
    """The path: +max_step down to -max_step in steps of ``step`` (0 always on it)."""
    if max_step < 0 or step <= 0:
        raise TuneError("max_step must be >= 0 and step > 0")
    k = math.floor(max_step / step + 1e-9)
    grid = [round(i * step, 9) for i in range(k, -k - 1, -1)]
    if max_step - k * step > 1e-9:  # max_step not a multiple of step: keep its ends
        grid = [max_step, *grid, -max_step]
    return grid


def uniform(response_id: str) -> float:
    """A number in [0, 1) from the response id alone (independent of the answers)."""
    return int.from_bytes(hashlib.sha256(response_id.encode()).digest()[:8], "big") / 2.0**64


def thin(rows: Sequence[Evidence]) -> tuple[list[Evidence], float]:
    """Rows kept so that each had the same inclusion probability ``q`` (the smallest), and ``q``."""
    usable = [r for r in rows if 0.0 < r.probability <= 1.0]
    if not usable:
        return [], 0.0
    q = min(r.probability for r in usable)
    return [r for r in usable if uniform(r.response_id) < q / r.probability], q


Step = tuple[int, float | None, int]  # (cheaper tier index, confidence, loss if it answers); -1: unknown


def steps(row: Evidence, tiers: Sequence[str]) -> list[Step]:
    """The row's way down the cascade from the first tier it reached: per cheaper tier, its
    confidence and the loss bound if that tier answers (module doc); a tier the request never
    reached under the policy it ran with ends the list with loss -1 (unknown)."""
    by_tier = {c.tier: c for c in row.comparisons}
    first = next((i for i, t in enumerate(tiers) if t in by_tier), None)
    if first is None:
        return []
    out: list[Step] = []
    for k in range(first, len(tiers) - 1):
        comp = by_tier.get(tiers[k])
        if comp is None:
            out.append((k, None, -1))
            break
        served = row.answered == comp.tier
        if served and row.label is not None:
            loss = 0 if row.label or comp.agree else 1
        elif served and row.bad_outcome:
            loss = 1
        else:
            loss = 0 if comp.agree else 1
        out.append((k, comp.confidence, loss))
    return out


def route_steps(path: Sequence[Step], thresholds: Sequence[float]) -> tuple[int | None, int]:
    """(the cheaper tier that answers, None for the capable tier or an unrecorded one; the loss
    bound) of prepared :func:`steps` under the cheaper tiers' ``thresholds``."""
    for k, conf, loss in path:
        if loss < 0:
            return None, 1  # never reached under the policy it ran with: its answer is unknown
        if conf is not None and conf >= thresholds[k]:
            return k, loss
    return None, 0  # the capable tier answers


def route(row: Evidence, tiers: Sequence[str], thresholds: Sequence[float]) -> tuple[int | None, int]:
    """(the cheaper tier that answers the row under the cheaper tiers' ``thresholds``, None for the
    capable tier or an unrecorded one; the row's loss bound ``U``, module doc)."""
    return route_steps(steps(row, tiers), thresholds)


def evidence_digest(rows: Sequence[Evidence]) -> str:
    h = hashlib.sha256()
    for r in rows:
        key = (r.response_id, r.probability, r.answered, r.comparisons, r.label, r.bad_outcome)
        h.update(repr(key).encode())
    return h.hexdigest()


def tune(
    spec: CascadePolicySpec,
    evidence: Iterable[Evidence],
    *,
    eps: float = DEFAULT_EPS,
    delta: float = DEFAULT_DELTA,
    max_step: float = DEFAULT_MAX_STEP,
    step: float = DEFAULT_STEP,
    allow_lower: bool = True,
) -> Tuning:
    """New thresholds for ``spec``'s cheaper tiers from production ``evidence`` (module doc).

    Returns a :class:`Tuning`: ``spec`` is the policy to write (thresholds changed, everything
    else as given) when ``is_certified``, else the input unchanged with ``why_not()`` saying why.
    Raises :class:`TuneError` for inputs that cannot be tuned (bad parameters, a one-tier
    policy, evidence about tiers the policy does not have).

    ``allow_lower=False`` tests only the shifts >= 0 (keep or raise).
    """
    from ..calibration import with_confidence

    if not 0.0 < eps < 1.0:
        raise TuneError(f"eps (--max-accuracy-drop) must lie in (0, 1), got {eps}")
    if not 0.0 < delta < 1.0:
        raise TuneError(f"delta must lie in (0, 1), got {delta}")
    if not 0.0 <= max_step <= 1.0:
        raise TuneError(f"max_step must lie in [0, 1], got {max_step}")
    tiers = [t.name for t in spec.tiers]
    if len(tiers) < 2:
        raise TuneError("the policy has one tier: there is no threshold to tune")
    rows = list(evidence)
    unknown = sorted({c.tier for r in rows for c in r.comparisons} - set(tiers[:-1]))
    if unknown:
        raise TuneError(
            f"the evidence names tiers the policy has no cheaper tier for: {', '.join(unknown)} "
            f"(policy tiers: {', '.join(tiers)}); tune the revision the evidence belongs to (--revision)"
        )
    known = [r for r in rows if 0.0 < r.probability <= 1.0]
    kept, q = thin(known)
    current = tuple(float(t.confidence.threshold) for t in spec.tiers[:-1])
    out = Tuning(
        spec=spec,
        eps=eps,
        delta=delta,
        max_step=max_step,
        n=len(kept),
        rows=len(known),
        unknown_probability=len(rows) - len(known),
        thinned_to=q,
        data_hash=evidence_digest(kept),
        current=current,
        labels_used=sum(1 for r in kept if r.label is not None),
        bad_outcomes=sum(1 for r in kept if r.bad_outcome),
    )
    if not kept:
        return out
    out.lowering = allow_lower
    prepared = [steps(r, tiers) for r in kept]
    for d in shifts(max_step, step):
        if d < 0 and not allow_lower:
            break
        thresholds = tuple(min(1.0, max(0.0, round(t + d, 9))) for t in current)
        losses = 0
        answered = [0] * (len(tiers) - 1)
        for path in prepared:
            k, loss = route_steps(path, thresholds)
            losses += loss
            if k is not None:
                answered[k] += 1
        p = binom_cdf(losses, len(kept), eps)
        out.path.append(TunePoint(d, thresholds, losses, tuple(a / len(kept) for a in answered), p))
        if p > delta:
            break
        out.certified += 1
    if out.certified:
        out.chosen = out.path[out.certified - 1]  # the lowest thresholds certified: the cheapest
        out.spec = with_confidence(spec, thresholds=list(out.chosen.thresholds))
    return out


def gather(
    comparisons: Iterable[tuple[str, float | None, str, str, float | None, bool]],
    labels: Mapping[str, bool],
    bad: set[str],
    tiers: Sequence[str],
) -> list[Evidence]:
    """Evidence rows from stored comparisons ``(response_id, probability, answered, tier,
    confidence, agree)``, the reviewers' labels by response id and the response ids with a bad
    outcome. A request's probability is the smallest of its comparisons' (None: unknown, 0)."""
    order = {t: i for i, t in enumerate(tiers)}
    grouped: dict[str, list[tuple[float | None, str, Comparison]]] = {}
    for rid, prob, answered, tier, conf, agree in comparisons:
        grouped.setdefault(rid, []).append((prob, answered, Comparison(tier, conf, agree)))
    out: list[Evidence] = []
    for rid, parts in grouped.items():
        probs = [p for p, _, _ in parts]
        prob = 0.0 if any(p is None for p in probs) else min(p for p in probs if p is not None)
        comps: dict[str, Comparison] = {}
        for _, _, c in parts:
            comps.setdefault(c.tier, c)  # a tier compared twice (shadow and escalation): the first
        ordered = tuple(sorted(comps.values(), key=lambda c: order.get(c.tier, len(order))))
        out.append(Evidence(rid, prob, parts[0][1], ordered, labels.get(rid), rid in bad))
    return out
