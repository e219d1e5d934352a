"""The drift scenario: how many requests after a traffic shift each quality monitor needs to fire.

Traffic is drawn (with replacement) from benchmark A's test rows for ``shift_at`` requests, then
from benchmark B's for ``horizon`` requests; the cascade, calibrated on A's train rows, answers
all of it. Monitors watching the cascade:

- ``aggregate-review``: the classic human review of a uniform 0.5% sample of all answers; the
  event is "the answer was wrong".
- ``tier-review:<tier>``: the same label budget (0.5% of requests) spent on the answers accepted at
  the cheaper tiers only, tracked per tier.
- ``stratified-review:<tier>``: the same label budget again, spent as the proxy's review sampler
  spends it (:mod:`tierguard.review.sampling`): on the tier's accepted answers, oversampling low
  calibrated confidence (the default band weights) and novel prompts (novelty against the
  calibration prompts, :mod:`tierguard.review.novelty`).
- ``calibration-review:<tier>``: the stratified review's labels again (the same draws), but the
  CUSUM watches the *residual*: each labelled answer's error is compared with its own expected
  error ``1 - c`` (``c`` its calibrated confidence, shifted by the tier's mean residual on
  pre-shift traffic), and the alternative is that error plus ``delta``. The between-answer
  variance the confidence already explains is taken out, and an answer the tier was sure of that
  turns out wrong weighs much more than a wrong one it hesitated on.
- ``shadow:<tier>``: the last tier re-answers a sample of a cheaper tier's accepted answers; the
  event is "the two recorded answers differ" (no human label needed).
- ``psi:<tier>``: PSI of the tier's raw confidences (last ``window`` answers, every ``step``)
  against the calibration data's distribution, on the fixed bins of
  :data:`tierguard.drift.CONFIDENCE_EDGES`.

The event monitors run a Bernoulli CUSUM (:class:`tierguard.drift.BernoulliCUSUM`) for a rise of
``delta`` over the baseline rate measured on pre-shift traffic. Every monitor's alarm threshold
is calibrated on pre-shift traffic alone: ``null_runs`` healthy streams of
``shift_at + horizon`` requests are replayed and the threshold is the (1 - alpha) quantile of the
largest statistic each saw, so a monitor false-alarms on about ``alpha`` of healthy streams of
that length. The drift is then replayed ``runs`` times; the report gives the median (and spread)
of the requests after the shift until the first alarm.

Streams are computed with numpy in bulk; the statistics are the ones of
:mod:`tierguard.drift` (tests check that they agree value for value).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..answers import answers_agree
from ..cascade import route
from ..drift import CONFIDENCE_EDGES, DEFAULT_EPS, BernoulliCUSUM, histogram, rate_shift, upper_quantile
from ..outcomes import Row
from ..policy import CascadeSpec, ReviewSpec
from ..review.novelty import NoveltyReference
from ..review.sampling import band_of, novelty_weight


@dataclass(frozen=True)
class DriftConfig:
    source: str
    target: str
    shift_at: int = 10_000
    horizon: int = 100_000
    review_rate: float = 0.005
    shadow_rate: float = 0.05
    psi_window: int = 500
    psi_step: int = 100
    alpha: float = 0.05
    delta: float = 0.05
    null_runs: int = 200
    runs: int = 20
    seed: int = 7


def _np() -> Any:
    import numpy as np

    return np


class Population:
    """Per-row arrays of what the cascade did on one benchmark's rows."""

    def __init__(
        self, spec: CascadeSpec, rows: Sequence[Row], novelty: NoveltyReference | None = None
    ) -> None:
        np = _np()
        n_t = len(spec.tiers)
        self.n = len(rows)
        last = n_t - 1
        routes = [route(spec, r.raw) for r in rows]
        answered = np.array([rt.answered_by for rt in routes])
        # the stratified review weight of each answer (default bands and weights, novelty boost)
        review = ReviewSpec()
        weights = []
        for r, rt in zip(rows, routes, strict=True):
            band = band_of(rt.judgements[-1].confidence, review.band_edges)
            w = review.band_weights[0 if band is None else band]
            nov = novelty.novelty(r.prompt) if novelty is not None else 0.0
            weights.append(w * novelty_weight(nov, review.novelty_boost))
        self.review_weight = np.array(weights, dtype=float)
        self.answered = answered
        # the answering tier's calibrated confidence (NaN when it has none)
        self.confidence = np.array(
            [
                np.nan if rt.judgements[-1].confidence is None else rt.judgements[-1].confidence
                for rt in routes
            ],
            dtype=float,
        )
        self.final_correct = np.array([r.correct[t] for r, t in zip(rows, answered, strict=True)], dtype=bool)
        self.tier_correct = np.array([[r.correct[t] for t in range(n_t)] for r in rows], dtype=bool).reshape(
            self.n, n_t
        )
        self.disagree = np.array(
            [[not answers_agree(r.answer[t], r.answer[last]) for t in range(n_t)] for r in rows], dtype=bool
        ).reshape(self.n, n_t)
        self.raw = np.array(
            [[np.nan if r.raw[t] is None else r.raw[t] for t in range(n_t)] for r in rows], dtype=float
        ).reshape(self.n, n_t)


def cusum_path(events: Any, p0: float, p1: float) -> Any:
    """The CUSUM statistic after each observation (same recursion as BernoulliCUSUM, vectorised)."""
    np = _np()
    c = BernoulliCUSUM(p0, p1)
    llr = np.where(events, c.up, c.down)
    w = np.cumsum(llr)
    return w - np.minimum(0.0, np.minimum.accumulate(w))


def residual_cusum_path(errors: Any, p0: Any, delta: float) -> Any:
    """A Bernoulli CUSUM whose null error rate is per observation (``p0[i]``) and whose alternative
    is ``p0[i] + delta`` (as :func:`tierguard.drift.rate_shift`, kept inside (p0, 1))."""
    np = _np()
    p0 = np.clip(np.asarray(p0, dtype=float), 1e-3, 1 - 1e-3)
    p1 = np.minimum(p0 + delta, (p0 + 1.0) / 2)
    llr = np.where(errors, np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0)))
    w = np.cumsum(llr)
    return w - np.minimum(0.0, np.minimum.accumulate(w))


def psi_path(
    values: Any, edges: Sequence[float], reference: Sequence[float], window: int, step: int
) -> tuple[Any, Any]:
    """(check indexes, PSI values) exactly as PSIWindow.observe would return them, vectorised."""
    np = _np()
    n = len(values)
    checks = np.arange(step, n + 1, step)
    checks = checks[checks >= window]
    if len(checks) == 0:
        return checks, np.zeros(0)
    bins = np.searchsorted(np.asarray(edges), values, side="right")
    onehot = np.zeros((n + 1, len(edges) + 1), dtype=np.int32)
    onehot[np.arange(1, n + 1), bins] = 1
    cum = np.cumsum(onehot, axis=0)
    counts = cum[checks] - cum[checks - window]
    ref = np.asarray(reference, dtype=float)
    ref = np.maximum(ref / ref.sum(), DEFAULT_EPS)
    act = np.maximum(counts / window, DEFAULT_EPS)
    return checks - 1, ((act - ref) * np.log(act / ref)).sum(axis=1)


@dataclass
class MonitorSpec:
    name: str
    kind: str  # "cusum" | "residual" | "psi"
    tier: int | None
    p0: float | None = None
    p1: float | None = None
    sample_rate: float | None = None
    threshold: float | None = None
    offset: float = 0.0  # calibration-review: the tier's mean residual (label - confidence) before the shift


class Scenario:
    def __init__(
        self,
        spec: CascadeSpec,
        pre: Sequence[Row],
        post: Sequence[Row],
        reference: Sequence[Row],
        cfg: DriftConfig,
    ) -> None:
        if not pre or not post:
            raise ValueError("the drift scenario needs rows on both sides of the shift")
        self.spec = spec
        self.cfg = cfg
        self.names = [t.name for t in spec.tiers]
        novelty = NoveltyReference.build(r.prompt for r in reference) if reference else None
        self.review_rng = _np().random.default_rng(cfg.seed + 1000)
        self.pre = Population(spec, pre, novelty)
        self.post = Population(spec, post, novelty)
        np = _np()
        last = len(spec.tiers) - 1
        self.last = last
        p = self.pre
        self.reference = []
        for t in range(last):
            vals = [x for x in (r.raw[t] for r in reference) if x is not None]
            self.reference.append(
                histogram(vals, CONFIDENCE_EDGES) if vals else [1] * (len(CONFIDENCE_EDGES) + 1)
            )
        accepted_cheap = float(np.mean(p.answered < last))
        self.tier_review_rate = min(1.0, cfg.review_rate / accepted_cheap) if accepted_cheap > 0 else 0.0
        self.monitors: list[MonitorSpec] = []
        p0 = max(1e-3, float(1.0 - p.final_correct.mean()))
        self.monitors.append(
            MonitorSpec("aggregate-review", "cusum", None, p0, rate_shift(p0, cfg.delta), cfg.review_rate)
        )
        for t in range(last):
            acc = p.answered == t
            if not acc.any():
                continue
            e0 = max(1e-3, float(1.0 - p.tier_correct[acc, t].mean()))
            self.monitors.append(
                MonitorSpec(
                    f"tier-review:{self.names[t]}",
                    "cusum",
                    t,
                    e0,
                    rate_shift(e0, cfg.delta),
                    self.tier_review_rate,
                )
            )
            # stratified: P(sample) = c * weight on the tier's answers, c set so that the expected
            # labels per request equal the aggregate sample's (on pre-shift traffic)
            w = np.where(acc, p.review_weight, 0.0)
            c = cfg.review_rate / float(w.mean()) if w.mean() > 0 else 0.0
            s0 = max(1e-3, float((w * ~p.tier_correct[:, t]).sum() / w.sum()))
            self.monitors.append(
                MonitorSpec(
                    f"stratified-review:{self.names[t]}", "cusum", t, s0, rate_shift(s0, cfg.delta), c
                )
            )
            conf = p.confidence
            known = acc & np.isfinite(conf)
            if known.any():
                wk = np.where(known, p.review_weight, 0.0)
                offset = float((wk * (p.tier_correct[:, t] - np.nan_to_num(conf))).sum() / wk.sum())
                self.monitors.append(
                    MonitorSpec(
                        f"calibration-review:{self.names[t]}", "residual", t, s0, None, c, offset=offset
                    )
                )
            d0 = max(1e-3, float(p.disagree[acc, t].mean()))
            self.monitors.append(
                MonitorSpec(
                    f"shadow:{self.names[t]}", "cusum", t, d0, rate_shift(d0, cfg.delta), cfg.shadow_rate
                )
            )
        for t in range(last):
            if np.isfinite(p.raw[:, t]).any():
                self.monitors.append(MonitorSpec(f"psi:{self.names[t]}", "psi", t))

    # --- one stream ------------------------------------------------------------------------------

    def _stream(self, rng: Any, n_pre: int, n_post: int) -> dict[str, Any]:
        np = _np()
        ip = rng.integers(0, self.pre.n, n_pre)
        iq = rng.integers(0, self.post.n, n_post)

        def cat(attr: str) -> Any:
            return np.concatenate([getattr(self.pre, attr)[ip], getattr(self.post, attr)[iq]])

        n = n_pre + n_post
        return {
            "answered": cat("answered"),
            "final_correct": cat("final_correct"),
            "tier_correct": cat("tier_correct"),
            "disagree": cat("disagree"),
            "raw": cat("raw"),
            "review_weight": cat("review_weight"),
            "confidence": cat("confidence"),
            "u": rng.random((n, 3)),  # independent sampling draws: review, tier review, shadow
            # the stratified review's draws from a generator of their own, so the other monitors'
            # streams are the same as without it
            "u_review": self.review_rng.random(n),
            "n": n,
        }

    def statistic(self, m: MonitorSpec, s: dict[str, Any]) -> tuple[Any, Any]:
        """(request positions, statistic after each) for monitor ``m`` on stream ``s``."""
        np = _np()
        if m.kind == "psi":
            assert m.tier is not None
            col = s["raw"][:, m.tier]
            reached = (s["answered"] >= m.tier) & np.isfinite(col)
            pos = np.nonzero(reached)[0]
            idx, vals = psi_path(
                col[pos], CONFIDENCE_EDGES, self.reference[m.tier], self.cfg.psi_window, self.cfg.psi_step
            )
            return pos[idx], vals
        if m.kind == "residual":
            assert m.tier is not None and m.sample_rate is not None
            q = np.minimum(1.0, m.sample_rate * s["review_weight"])
            mask = (s["answered"] == m.tier) & (s["u_review"] < q) & np.isfinite(s["confidence"])
            errors = ~s["tier_correct"][mask, m.tier]
            expected_error = 1.0 - (s["confidence"][mask] + m.offset)
            return np.nonzero(mask)[0], residual_cusum_path(errors, expected_error, self.cfg.delta)
        assert m.p0 is not None and m.p1 is not None and m.sample_rate is not None
        if m.tier is None:
            mask = s["u"][:, 0] < m.sample_rate
            events = ~s["final_correct"][mask]
        elif m.name.startswith("tier-review"):
            mask = (s["answered"] == m.tier) & (s["u"][:, 1] < m.sample_rate)
            events = ~s["tier_correct"][mask, m.tier]
        elif m.name.startswith("stratified-review"):
            q = np.minimum(1.0, m.sample_rate * s["review_weight"])
            mask = (s["answered"] == m.tier) & (s["u_review"] < q)
            events = ~s["tier_correct"][mask, m.tier]
        else:
            mask = (s["answered"] == m.tier) & (s["u"][:, 2] < m.sample_rate)
            events = s["disagree"][mask, m.tier]
        return np.nonzero(mask)[0], cusum_path(events, m.p0, m.p1)

    # --- calibration and the drift runs -----------------------------------------------------------

    def calibrate(self, progress: bool = False) -> None:
        np = _np()
        rng = np.random.default_rng(self.cfg.seed)
        length = self.cfg.shift_at + self.cfg.horizon
        peaks: dict[str, list[float]] = {m.name: [] for m in self.monitors}
        for k in range(self.cfg.null_runs):
            s = self._stream(rng, length, 0)
            for m in self.monitors:
                _, stat = self.statistic(m, s)
                peaks[m.name].append(float(stat.max()) if len(stat) else 0.0)
            if progress and (k + 1) % 20 == 0:
                print(f"  drift: false-alarm calibration {k + 1}/{self.cfg.null_runs}", file=sys.stderr)
        for m in self.monitors:
            m.threshold = max(upper_quantile(peaks[m.name], self.cfg.alpha), 1e-9)

    def run(self, progress: bool = False) -> dict[str, Any]:
        np = _np()
        if any(m.threshold is None for m in self.monitors):
            self.calibrate(progress)
        rng = np.random.default_rng(self.cfg.seed + 1)
        k_shift = self.cfg.shift_at
        delays: dict[str, list[int | None]] = {m.name: [] for m in self.monitors}
        false_alarms: dict[str, int] = {m.name: 0 for m in self.monitors}
        labels: dict[str, list[int]] = {m.name: [] for m in self.monitors}
        for k in range(self.cfg.runs):
            s = self._stream(rng, k_shift, self.cfg.horizon)
            for m in self.monitors:
                pos, stat = self.statistic(m, s)
                fired = pos[stat >= m.threshold]
                if len(fired) and fired[0] < k_shift:
                    false_alarms[m.name] += 1
                after = fired[fired >= k_shift]
                delays[m.name].append(int(after[0] - k_shift + 1) if len(after) else None)
                if m.kind in ("cusum", "residual"):
                    labels[m.name].append(
                        int(np.sum((pos >= k_shift) & (pos < (after[0] if len(after) else s["n"]))))
                    )
            if progress:
                print(f"  drift: run {k + 1}/{self.cfg.runs}", file=sys.stderr)
        out: list[dict[str, Any]] = []
        for m in self.monitors:
            d = delays[m.name]
            out.append(
                {
                    **asdict(m),
                    "tier": None if m.tier is None else self.names[m.tier],
                    "delays": d,
                    "median_delay": _median_censored(d),
                    "p10_delay": _quantile_censored(d, 0.1),
                    "p90_delay": _quantile_censored(d, 0.9),
                    "not_fired": sum(1 for x in d if x is None),
                    "false_alarms_before_shift": false_alarms[m.name],
                    "median_samples_to_fire": float(np.median(labels[m.name])) if labels[m.name] else None,
                }
            )
        agg = next((o for o in out if o["name"] == "aggregate-review"), None)
        for o in out:
            if agg and agg["median_delay"] and o["median_delay"]:
                o["speedup_vs_aggregate"] = agg["median_delay"] / o["median_delay"]
            else:
                o["speedup_vs_aggregate"] = None
        return {
            "config": asdict(self.cfg),
            "tier_review_rate": self.tier_review_rate,
            "pre_rows": self.pre.n,
            "post_rows": self.post.n,
            "cascade_accuracy_before": float(self.pre.final_correct.mean()),
            "cascade_accuracy_after": float(self.post.final_correct.mean()),
            "monitors": out,
        }


def _quantile_censored(values: Sequence[int | None], q: float) -> float | None:
    """Quantile with 'never fired' counted as larger than any delay; None if it lands there."""
    np = _np()
    n = len(values)
    if n == 0:
        return None
    big = float("inf")
    ordered = sorted(big if v is None else float(v) for v in values)
    v = float(np.quantile(np.array(ordered), q, method="lower")) if n else big
    return None if v == big else v


def _median_censored(values: Sequence[int | None]) -> float | None:
    return _quantile_censored(values, 0.5)
