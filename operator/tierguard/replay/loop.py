"""The closed loop on recorded data: review labels feed ``tune``, tune moves the thresholds.

Traffic is drawn (with replacement) from benchmark A's test rows for ``shift_at`` requests, then
from benchmark B's for ``horizon`` requests. Two copies of the cascade answer the same stream:

- **static**: the policy as fitted, never changed;
- **tuned**: every answer goes through the proxy's review sampler
  (:class:`tierguard.review.sampling.Sampler`: per (tier, confidence band) strata, novelty against
  the calibration prompts, inclusion probabilities); each sampled answer is labelled with its
  recorded correctness ``label_delay`` requests later; every ``tune_every`` requests the labels of
  the last ``label_window`` requests go to the tuner (:data:`TUNER`, today
  :func:`tierguard.review.tune.tune_tier` per tier) and its thresholds are in force from the next
  request on: the certified tune of ``tierguard tune`` (:func:`tierguard.review.tune.tune`,
  Learn-then-Test with eps = ``max_drop``) on the window's shadow and escalation comparisons (the
  proxy's shadow scoring at ``shadow_rate``; the shadow calls are paid for, ``shadow_cost_share``),
  with the reviewers' labels settling disagreements.

The curves are the *expected* accuracy and savings of the thresholds in force at each point,
over the rows traffic is drawn from at that point (A's test rows before the shift, B's after):
the policy's quality, not the noise of one stream. The capable tier alone is the reference line.
``runs`` replications give the median curve and the median number of requests after the shift
until the tuned cascade is back to at least the capable tier's accuracy minus ``max_drop``.
"""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..answers import answers_agree
from ..calibration import with_confidence
from ..outcomes import Row
from ..policy import CascadePolicySpec, CascadeSpec, ReviewSpec
from ..review.novelty import NoveltyReference
from ..review.sampling import Sampler

# --- the tuner, behind a narrow adapter -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    """A reviewed accepted answer: its calibrated confidence, the label, its inclusion probability."""

    confidence: float
    correct: bool
    probability: float


@dataclass(frozen=True, slots=True)
class Compared:
    """One request the capable tier answered next to the cheaper ones: a shadow call after an
    accepted cheaper answer, or an escalated request (both answers exist). ``comparisons``: per
    cheaper tier the request reached, (tier, calibrated confidence, agrees with the capable tier's
    answer); ``label``: the reviewer's verdict on the answer the client got, when it was sampled."""

    response_id: str
    probability: float
    answered: str
    comparisons: tuple[tuple[str, float | None, bool], ...]
    label: bool | None = None


@dataclass(frozen=True)
class TuneRequest:
    """What a tune run sees: the thresholds in force, per accepting tier its reviewed accepted
    answers (calibrated confidence, label, inclusion probability), the policy in force and the
    window's shadow and escalation comparisons."""

    thresholds: tuple[float, ...]
    labels: tuple[tuple[Label, ...], ...]
    max_drop: float
    max_step: float
    spec: CascadePolicySpec | None = None  # the policy with the thresholds in force
    compared: tuple[Compared, ...] = ()  # shadow and escalation comparisons of the window


Tuner = Callable[[TuneRequest], list[float]]


def tune_certified(req: TuneRequest) -> list[float]:
    """:func:`tierguard.review.tune.tune` (Learn-then-Test on the window's shadow and escalation
    comparisons, eps = ``max_drop``); the thresholds in force when nothing is certified."""
    from ..review.tune import Comparison, Evidence, TuneError, tune

    if req.spec is None:
        return list(req.thresholds)
    evidence = [
        Evidence(
            c.response_id,
            c.probability,
            c.answered,
            tuple(Comparison(t, conf, agree) for t, conf, agree in c.comparisons),
            c.label,
        )
        for c in req.compared
    ]
    try:
        result = tune(req.spec, evidence, eps=req.max_drop, max_step=req.max_step)
    except TuneError:
        return list(req.thresholds)
    return list(result.new_thresholds)


TUNER: Tuner = tune_certified


# --- the rows, as arrays ----------------------------------------------------------------------------


class Table:
    """Per row: every tier's calibrated confidence, correctness and cost, and the prompt's novelty."""

    def __init__(self, spec: CascadeSpec, rows: Sequence[Row], novelty: NoveltyReference | None) -> None:
        n_t = len(spec.tiers)
        self.n_tiers = n_t
        maps = [t.confidence.calibration_map() for t in spec.tiers]
        self.conf: list[list[float | None]] = [
            [None if (x := r.raw[t]) is None else maps[t](x) for t in range(n_t)] for r in rows
        ]
        self.correct = [list(r.correct) for r in rows]
        self.cum_cost = [[sum(r.cost[: t + 1]) for t in range(n_t)] for r in rows]
        self.capable_cost = [r.cost[n_t - 1] for r in rows]
        self.agree = [[answers_agree(r.answer[t], r.answer[-1]) for t in range(n_t)] for r in rows]
        self.novelty = [novelty.novelty(r.prompt) if novelty else 0.0 for r in rows]
        self.n = len(rows)

    def answered(self, i: int, thresholds: Sequence[float]) -> int:
        """The tier that answers row ``i`` (the proxy's rule: the first tier whose calibrated
        confidence reaches its threshold; the last tier always answers)."""
        conf = self.conf[i]
        for t, thr in enumerate(thresholds):
            c = conf[t]
            if c is not None and c >= thr:
                return t
        return self.n_tiers - 1

    def quality(self, thresholds: Sequence[float]) -> tuple[float, float]:
        """(accuracy, savings vs the capable tier) of these thresholds over every row."""
        right = cost = 0.0
        for i in range(self.n):
            t = self.answered(i, thresholds)
            right += self.correct[i][t]
            cost += self.cum_cost[i][t]
        capable = sum(self.capable_cost)
        return right / self.n, (1.0 - cost / capable) if capable > 0 else 0.0

    def capable_accuracy(self) -> float:
        return sum(c[-1] for c in self.correct) / self.n


@dataclass(frozen=True)
class LoopConfig:
    source: str
    target: str
    shift_at: int = 10_000
    horizon: int = 40_000
    review_rate: float = 0.01
    tune_every: int = 1_000
    label_window: int = 10_000
    label_delay: int = 0
    max_step: float = 0.05
    max_drop: float = 0.01
    tune_from: int = 0  # the first request after which tune runs (e.g. the shift: tune once drift is seen)
    shadow_rate: float = (
        0.05  # accepted cheaper answers re-asked to the capable tier; escalations kept at it too
    )
    runs: int = 10
    seed: int = 7


@dataclass
class _Labelled:
    at: int  # request index the label becomes available
    tier: int
    label: Label


@dataclass
class RunResult:
    thresholds: list[list[float]] = field(default_factory=list)  # in force after each checkpoint
    labels: int = 0
    shadow_usd: float = 0.0  # the capable tier's shadow answers next to the sampled ones
    back_after: int | None = None  # requests after the shift until back within max_drop of capable


class Loop:
    def __init__(
        self,
        spec: CascadePolicySpec,
        pre: Sequence[Row],
        post: Sequence[Row],
        reference: Sequence[Row],
        cfg: LoopConfig,
        tuner: Tuner | None = None,
    ) -> None:
        if not pre or not post:
            raise ValueError("the loop scenario needs rows on both sides of the shift")
        self.cfg = cfg
        self.spec = spec
        self.tuner = tuner or TUNER
        self.names = [t.name for t in spec.tiers]
        novelty = NoveltyReference.build(r.prompt for r in reference) if reference else None
        self.pre = Table(spec, pre, novelty)
        self.post = Table(spec, post, novelty)
        self.static = [t.confidence.threshold for t in spec.tiers[:-1]]
        self.target_basis = (
            f"certified: accuracy at most {cfg.max_drop:g} below {self.names[-1]}'s with probability 0.9 "
            "(tune's Learn-then-Test on the shadow and escalation comparisons of the window)"
        )
        self._quality_cache: dict[tuple[int, tuple[float, ...]], tuple[float, float]] = {}

    def quality(self, phase: int, thresholds: Sequence[float]) -> tuple[float, float]:
        key = (phase, tuple(thresholds))
        if key not in self._quality_cache:
            self._quality_cache[key] = (self.pre if phase == 0 else self.post).quality(thresholds)
        return self._quality_cache[key]

    def capable_cost(self) -> float:
        """The expected cost of the capable tier alone over the whole stream."""
        mean = [sum(t.capable_cost) / t.n for t in (self.pre, self.post)]
        return self.cfg.shift_at * mean[0] + self.cfg.horizon * mean[1]

    def checkpoints(self) -> list[int]:
        total = self.cfg.shift_at + self.cfg.horizon
        return list(range(self.cfg.tune_every, total + 1, self.cfg.tune_every))

    def run_once(self, rng: random.Random) -> RunResult:
        cfg = self.cfg
        n_acc = len(self.static)
        sampler = Sampler(
            ReviewSpec(rate=cfg.review_rate, quota_per_hour=1_000_000), random.Random(rng.random())
        )
        thresholds = list(self.static)
        pending: list[_Labelled] = []
        compared: list[tuple[int, Compared]] = []
        out = RunResult()
        total = cfg.shift_at + cfg.horizon
        cap_post = self.post.capable_accuracy()
        for i in range(total):
            table = self.pre if i < cfg.shift_at else self.post
            row = rng.randrange(table.n)
            t = table.answered(row, thresholds)
            conf = table.conf[row][t]
            d = sampler.draw("r", self.names[t], conf, table.novelty[row], float(i))
            if d.sampled and t < n_acc and conf is not None:
                label = Label(conf, bool(table.correct[row][t]), d.probability)
                pending.append(_Labelled(i + cfg.label_delay, t, label))
                out.labels += 1
            if rng.random() < cfg.shadow_rate:  # a shadow call, or an escalation kept as evidence
                if t < n_acc:
                    out.shadow_usd += table.capable_cost[row]
                reached = range(t + 1) if t < n_acc else range(n_acc)
                comps = tuple((self.names[k], table.conf[row][k], table.agree[row][k]) for k in reached)
                verdict = bool(table.correct[row][t]) if d.sampled else None
                compared.append((i, Compared(f"req-{i}", cfg.shadow_rate, self.names[t], comps, verdict)))
            if (i + 1) % cfg.tune_every:
                continue
            if i + 1 <= cfg.tune_from:
                out.thresholds.append(list(thresholds))
                continue
            window = [x for x in pending if i - cfg.label_window < x.at <= i]
            pending = [x for x in pending if x.at > i - cfg.label_window]
            per_tier = tuple(tuple(x.label for x in window if x.tier == k) for k in range(n_acc))
            compared = [(at, c) for at, c in compared if at > i - cfg.label_window]
            req = TuneRequest(
                tuple(thresholds),
                per_tier,
                cfg.max_drop,
                cfg.max_step,
                with_confidence(
                    self.spec, thresholds=[*thresholds, self.spec.tiers[-1].confidence.threshold]
                ),
                tuple(c for _, c in compared),
            )
            thresholds = list(self.tuner(req))
            out.thresholds.append(list(thresholds))
            if i + 1 >= cfg.shift_at and out.back_after is None:
                acc, _sav = self.quality(1, thresholds)
                if acc >= cap_post - cfg.max_drop:
                    out.back_after = i + 1 - cfg.shift_at
        return out

    def run(self, progress: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        rng = random.Random(cfg.seed)
        runs = []
        for k in range(cfg.runs):
            runs.append(self.run_once(rng))
            if progress:
                print(f"  loop: run {k + 1}/{cfg.runs}", file=sys.stderr)
        cps = self.checkpoints()
        cap = (self.pre.capable_accuracy(), self.post.capable_accuracy())
        static = (self.quality(0, self.static), self.quality(1, self.static))
        curve = []
        for j, at in enumerate(cps):
            phase = 0 if at <= cfg.shift_at else 1
            q = [self.quality(phase, r.thresholds[j]) for r in runs]
            curve.append(
                {
                    "request": at,
                    "capable_accuracy": cap[phase],
                    "static_accuracy": static[phase][0],
                    "static_savings": static[phase][1],
                    "tuned_accuracy": statistics.median(a for a, _ in q),
                    "tuned_accuracy_p10": _quantile([a for a, _ in q], 0.1),
                    "tuned_accuracy_p90": _quantile([a for a, _ in q], 0.9),
                    "tuned_savings": statistics.median(s for _, s in q),
                    "tuned_thresholds": [
                        statistics.median(r.thresholds[j][k] for r in runs) for k in range(len(self.static))
                    ],
                }
            )
        back = [r.back_after for r in runs]
        final = [self.quality(1, r.thresholds[-1]) for r in runs]
        return {
            "config": asdict(cfg),
            "tuner": getattr(self.tuner, "__name__", str(self.tuner)),
            "target_basis": self.target_basis,
            "static_thresholds": self.static,
            "tiers": self.names,
            "pre_rows": self.pre.n,
            "post_rows": self.post.n,
            "capable_accuracy_before": cap[0],
            "capable_accuracy_after": cap[1],
            "static_before": {"accuracy": static[0][0], "savings": static[0][1]},
            "static_after": {"accuracy": static[1][0], "savings": static[1][1]},
            "tuned_final": {
                "accuracy": statistics.median(a for a, _ in final),
                "savings": statistics.median(s for _, s in final),
                "thresholds": curve[-1]["tuned_thresholds"] if curve else [],
            },
            "back_after": back,
            "median_back_after": _median_censored(back),
            "never_back": sum(1 for b in back if b is None),
            "median_labels": statistics.median(r.labels for r in runs),
            # the shadow answers' cost as a share of what the capable tier alone would have cost
            "shadow_cost_share": statistics.median(r.shadow_usd for r in runs) / self.capable_cost(),
            "curve": curve,
        }


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _median_censored(values: Sequence[int | None]) -> float | None:
    """The median with 'never' larger than any number; None when the median lands there."""
    big = float("inf")
    ordered = sorted(big if v is None else float(v) for v in values)
    if not ordered:
        return None
    m = ordered[(len(ordered) - 1) // 2]
    return None if m == big else m
