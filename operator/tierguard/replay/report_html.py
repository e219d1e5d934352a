"""The replay report as one self-contained HTML file: tables and inline SVG plots, no scripts, no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from ..reliability import reliability_section
from ..svgplot import CSS, DASH, PALETTE, Series, bar_chart, scatter_chart

COST_MATCH = 0.01  # relative difference under which two mean costs count as equal


def cost_matched(cascade_cost: float, pre_route_cost: float) -> bool:
    return abs(pre_route_cost - cascade_cost) <= COST_MATCH * max(cascade_cost, 1e-300)


def equal_cost_label(eq: dict[str, Any]) -> str:
    """ "at equal cost" only when the pre-router's cost really matched the cascade's."""
    if eq.get("cost_matched", True):
        return "at equal cost"
    c, p = eq["cascade_cost"], eq["pre_route_cost"]
    rel = 1.0 - p / c if c else 0.0
    return (
        f"NOT at equal cost (the pre-router cannot spend more than ${p:.3e}/query, "
        f"{rel:.0%} {'cheaper' if rel > 0 else 'dearer'} than the cascade's ${c:.3e})"
    )


def _p(v: Any, digits: int = 1) -> str:
    return DASH if v is None else f"{v * 100:.{digits}f}%"


def _usd(v: Any) -> str:
    return DASH if v is None else f"${v:.3e}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left_cols: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left_cols else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    body = []
    for r in rows:
        tds = "".join(f'<td class="{"l" if i < left_cols else ""}">{c}</td>' for i, c in enumerate(r))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def strategies_table(report: dict[str, Any]) -> str:
    tiers = [t["name"] for t in report["policy"]]
    head = ["strategy", "accuracy", "long tail (worst 10% categories)", "$ / query", "savings vs capable"]
    head += ["escalation rate", "calls / query"]
    head += [f"{t}: share / accuracy" for t in tiers]
    rows = []
    for s in report["strategies"]:
        cells = [
            escape(s["strategy"]),
            _p(s["accuracy"]),
            _p(s["long_tail_accuracy"]),
            _usd(s["cost_per_query_usd"]),
            _p(s["savings_vs_capable"]),
            _p(s["escalation_rate"]),
            f"{s['calls_per_query']:.2f}",
        ]
        cells += [f"{_p(pt['share'])} / {_p(pt['accuracy'])}" for pt in s["per_tier"]]
        rows.append(cells)
    return _table(head, rows)


def _frontier_chart(report: dict[str, Any]) -> str:
    fr = report.get("frontiers") or {}
    series: list[Series] = []
    colors = iter(PALETTE)
    for name, pts in fr.items():
        if name == "single-tier":
            continue
        key = (
            "threshold"
            if name == "cascade"
            else ("tau" if "tau" in (pts[0] if pts else {}) else "max_accuracy_drop")
        )
        series.append(
            Series(
                f"{name} (swept)",
                [(p["cost_per_query_usd"], p["accuracy"]) for p in pts],
                next(colors),
                labels=[
                    f"{name} {key}={p.get(key)}: {p['accuracy']:.3f} @ ${p['cost_per_query_usd']:.2e}"
                    for p in pts
                ],
            )
        )
    if "single-tier" in fr:
        series.append(
            Series(
                "single tiers",
                [(p["cost_per_query_usd"], p["accuracy"]) for p in fr["single-tier"]],
                "#444",
                line=False,
                labels=[f"{p['tier']}" for p in fr["single-tier"]],
            )
        )
    ops = [
        s for s in report["strategies"] if s["strategy"] in ("cascade", "pre-route-classifier", "allowlist")
    ]
    if ops:
        series.append(
            Series(
                "operating points (cascade, pre-route, allowlist)",
                [(s["cost_per_query_usd"], s["accuracy"]) for s in ops],
                "#000",
                line=False,
                labels=[s["strategy"] for s in ops],
            )
        )
    return scatter_chart(
        series,
        title="Cost-quality frontier (test split)",
        x_label="mean cost per query (USD)",
        y_label="accuracy",
        width=640,
        height=400,
    )


def _calibration_chart(report: dict[str, Any]) -> str:
    series = []
    for i, t in enumerate(report["policy"]):
        pts = t.get("calibration") or []
        if pts:
            series.append(Series(f"{t['name']} ({t['model']})", [(p[0], p[1]) for p in pts], PALETTE[i % 8]))
    series.append(Series("identity", [(0.0, 0.0), (1.0, 1.0)], "#bbb"))
    return scatter_chart(
        series,
        title="Calibration maps (fitted on train)",
        x_label="raw confidence",
        y_label="P(correct)",
        width=420,
        height=360,
        x_pct=True,
    )


def _drift_section(d: dict[str, Any]) -> str:
    cfg = d["config"]
    parts = [
        "<h2>Scenario: drift</h2>",
        f"<p>Traffic from <b>{escape(cfg['source'])}</b> (the policy is calibrated on its train split) for "
        f"{cfg['shift_at']:,} requests, then from <b>{escape(cfg['target'])}</b> "
        f"for {cfg['horizon']:,} requests (rows drawn with replacement from each benchmark's test split; "
        f"{cfg['runs']} runs). Alarm thresholds are "
        f"calibrated on {cfg['null_runs']} healthy streams of {cfg['shift_at'] + cfg['horizon']:,} pre-shift "
        f"requests for a false-alarm rate of {cfg['alpha']:.0%} per stream. "
        "Event monitors: Bernoulli CUSUM for a "
        f"rise of {cfg['delta'] * 100:.0f} points over the pre-shift rate. Human review samples "
        f"{cfg['review_rate']:.1%} of all answers (aggregate) "
        "or the same budget spread over the cheaper tiers' "
        f"accepted answers (per tier, {d['tier_review_rate']:.2%} of them); "
        "shadow scoring re-asks the last tier "
        f"on {cfg['shadow_rate']:.0%} of accepted cheaper answers.</p>",
        "<h3>Quality before and after the shift</h3>",
        _table(
            ["strategy", "accuracy before", "accuracy after", "drop (points)", "$ / query before", "after"],
            [
                [
                    escape(q["strategy"]),
                    _p(q["accuracy_before"]),
                    _p(q["accuracy_after"]),
                    f"{q['drop'] * 100:.1f}",
                    _usd(q["cost_before"]),
                    _usd(q["cost_after"]),
                ]
                for q in d["quality"]
            ],
        ),
        "<h3>Requests after the shift until each monitor fires</h3>",
    ]
    rows = []
    for m in d["monitors"]:
        md = m["median_delay"]
        rows.append(
            [
                escape(m["name"]),
                DASH if m["sample_rate"] is None else _p(m["sample_rate"], 2),
                _rates(m, cfg["delta"]),
                f"{m['threshold']:.3g}",
                "not fired" if md is None else f"{int(md):,}",
                DASH if m["p10_delay"] is None else f"{int(m['p10_delay']):,}",
                DASH if m["p90_delay"] is None else f"{int(m['p90_delay']):,}",
                f"{m['not_fired']}/{len(m['delays'])}",
                f"{m['false_alarms_before_shift']}/{len(m['delays'])}",
                DASH if m["speedup_vs_aggregate"] is None else f"{m['speedup_vs_aggregate']:.1f}x",
            ]
        )
    parts.append(
        _table(
            [
                "monitor",
                "sample rate",
                "baseline → watched rate",
                "alarm threshold",
                "median requests to fire",
                "p10",
                "p90",
                "not fired",
                "false alarms pre-shift",
                "speed-up vs aggregate",
            ],
            rows,
        )
    )
    labels = [m["name"] for m in d["monitors"]]
    vals = [m["median_delay"] for m in d["monitors"]]
    parts.append(
        bar_chart(
            labels,
            [("median requests after the shift until the alarm (log scale)", vals)],
            title="Time to detect the shift",
            log=True,
            width=640,
            value_fmt="{:,.0f}",
        )
    )
    return "".join(parts)


def _rates(m: dict[str, Any], delta: float) -> str:
    if m["kind"] == "residual":
        return f"per answer: 1 - confidence - {m['offset']:+.3f} → +{delta:.2f}"
    return DASH if m["p0"] is None else f"{m['p0']:.3f} → {m['p1']:.3f}"


def _loop_section(lo: dict[str, Any]) -> str:
    cfg = lo["config"]
    shift = cfg["shift_at"]
    curve = lo["curve"]
    mb = lo["median_back_after"]
    tune_from = f"; tune runs from request {cfg['tune_from']:,} on" if cfg.get("tune_from") else ""
    parts = [
        "<h2>Scenario: the closed loop (review labels → tune)</h2>",
        f"<p>Traffic from <b>{escape(cfg['source'])}</b> for {shift:,} requests, then from "
        f"<b>{escape(cfg['target'])}</b> for {cfg['horizon']:,} (rows drawn with replacement from each "
        f"benchmark's test split; {cfg['runs']} runs). The <b>static</b> policy keeps its thresholds. The "
        "<b>tuned</b> one: every answer goes through the proxy's review sampler (base rate "
        f"{cfg['review_rate']:.1%}, default band weights, novelty against the calibration prompts); sampled "
        f"cheaper-tier answers are labelled {cfg['label_delay']:,} requests later; every "
        f"{cfg['tune_every']:,} requests <code>{escape(lo['tuner'])}</code> reads the evidence of the "
        f"last {cfg['label_window']:,} requests and moves the thresholds by at most {cfg['max_step']:g}"
        f"{tune_from}. Tune's target: {escape(lo['target_basis'])}. {lo['median_labels']:,.0f} review "
        f"labels per run (median); the shadow calls ({_p(cfg['shadow_rate'], 0)} of accepted cheaper "
        "answers) cost "
        f"{_p(lo['shadow_cost_share'], 2)} of the capable tier alone (not in the savings curve)"
        + ". Curves: the expected accuracy and savings of the thresholds in "
        "force, over the rows traffic is drawn from at that point (median over runs).</p>",
        _table(
            ["", "accuracy", "savings vs capable", "thresholds"],
            [
                ["capable tier alone, after the shift", _p(lo["capable_accuracy_after"]), _p(0.0), DASH],
                [
                    "static, after the shift",
                    _p(lo["static_after"]["accuracy"]),
                    _p(lo["static_after"]["savings"]),
                    ", ".join(f"{t:.3f}" for t in lo["static_thresholds"]),
                ],
                [
                    "tuned, at the end",
                    _p(lo["tuned_final"]["accuracy"]),
                    _p(lo["tuned_final"]["savings"]),
                    ", ".join(f"{t:.3f}" for t in lo["tuned_final"]["thresholds"]),
                ],
            ],
        ),
        f"<p id='loop-back'>Tuned cascade back within {cfg['max_drop'] * 100:g} point(s) "
        "of the capable tier: "
        + (
            "<b class='bad'>not in the median run</b>"
            if mb is None
            else f"<b>{int(mb):,} requests after the shift</b> (median)"
        )
        + f"; {lo['never_back']}/{len(lo['back_after'])} runs never.</p>",
        "<div class='charts'>",
    ]
    xs = [c["request"] for c in curve]

    def series(key: str, name: str, colour: str) -> Series:
        return Series(name, list(zip(xs, [c[key] for c in curve], strict=True)), colour)

    floor = [(x, c["capable_accuracy"] - cfg["max_drop"]) for x, c in zip(xs, curve, strict=True)]
    parts.append(
        scatter_chart(
            [
                series("capable_accuracy", "capable tier alone", PALETTE[7]),
                Series(f"capable - {cfg['max_drop'] * 100:g} pt", floor, "#bbbbbb"),
                series("static_accuracy", "static policy", PALETTE[1]),
                series("tuned_accuracy", "tuned from review labels", PALETTE[0]),
            ],
            title=f"Accuracy over time (shift at request {shift:,})",
            x_label="requests",
            y_label="accuracy",
            width=640,
        )
    )
    parts.append(
        scatter_chart(
            [
                series("static_savings", "static policy", PALETTE[1]),
                series("tuned_savings", "tuned from review labels", PALETTE[0]),
            ],
            title=f"Savings vs the capable tier over time (shift at request {shift:,})",
            x_label="requests",
            y_label="savings",
            width=640,
        )
    )
    parts.append("</div>")
    return "".join(parts)


def _rollout_section(ro: dict[str, Any]) -> str:
    cfg = ro["config"]
    parts = [
        "<h2>Rollout on test traffic</h2>",
        f"<p class='muted'>The policy fitted on train rolled out against capable-only with the operator's "
        f"decide(): {cfg['requests_per_interval']:,} replayed requests per analysis interval, shadow rate "
        f"{_p(cfg['shadow_rate'], 0)}, steps {escape(str([s['weight'] for s in cfg['rollout']['steps']]))}. "
        "QualitySLO: each cheaper tier's shadow disagreement, bounded from train (docs/guarantee.md).</p>",
    ]
    rows = []
    for p in ro["policies"]:
        if p.get("capable_only"):
            rows.append([escape(p["policy"]), "capable-only", DASH, DASH, DASH, DASH])
            continue
        rows.append(
            [
                escape(p["policy"]),
                f"{p['test_gap'] * 100:+.1f}",
                f"{p['promoted']}/{p['runs']}",
                f"{p['rolled_back']}/{p['runs']}"
                + (
                    f" (at {', '.join(str(w) for w in p['rolled_back_at_weights'])}%)"
                    if p["rolled_back"]
                    else ""
                ),
                DASH if p["median_requests_to_decision"] is None else f"{p['median_requests_to_decision']:,}",
                ", ".join(f"{o['tier']} &le; {o['max']:.3f}" for o in p["slo"] if "tier" in o),
            ]
        )
    parts.append(
        _table(
            ["policy", "test gap (points)", "promoted", "rolled back", "median requests to decision", "SLO"],
            rows,
        )
    )
    rs = ro["resplits"]
    if rs["splits"]:
        fr = rs["false_rollback_rate"]
        parts.append(
            f"<p>Exchangeable re-splits: {rs['splits']} refits, {rs['capable_only']} capable-only, "
            f"{rs['good']} good policies (test gap within eps), {rs['false_rollbacks']} of them rolled back"
            + (f" ({_p(fr)} &plusmn; {_p(rs['standard_error'])})" if fr is not None else "")
            + ".</p>"
        )
    return "".join(parts)


def render(report: dict[str, Any]) -> str:
    data = report["data"]
    fit = report["fit"]
    title = f"tierguard replay: {report['policy_name']}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='muted'>tierguard {escape(report['version'])} · "
        f"data <code>{escape(data['path'])}</code> · "
        f"benchmarks {escape(', '.join(report['benchmarks']))} · "
        f"policy <code>{escape(report['policy_file'])}</code> · "
        f"fitted on train ({report['train_rows']} rows), reported on test ({report['test_rows']} rows)</p>",
        f"<p>Rows: {data['records']:,} records read, {data['rows_used']:,} usable, "
        f"<b>{data['malformed_lines']}</b> malformed lines skipped, "
        f"<b>{data['skipped_rows']}</b> rows skipped"
        + (
            " (" + escape("; ".join(f"{k}: {v}" for k, v in data["skipped_reasons"].items())) + ")"
            if data["skipped_reasons"]
            else ""
        )
        + ".</p>",
    ]
    if data["malformed_examples"]:
        parts.append(
            "<ul>"
            + "".join(f"<li><code>{escape(e)}</code></li>" for e in data["malformed_examples"])
            + "</ul>"
        )
    parts.append("<h2>Strategies (test split)</h2>")
    parts.append(strategies_table(report))
    eq = report.get("equal_cost")
    if eq:
        gap_cls = "good" if eq["accuracy_gap"] > 0 else "bad"
        tail = (
            f", long tail <b class='{'good' if eq['long_tail_gap'] > 0 else 'bad'}'>"
            f"{eq['long_tail_gap'] * 100:+.1f} points</b>"
            if eq["long_tail_gap"] is not None
            else ""
        )
        label = equal_cost_label(eq)
        parts.append(
            f"<p>{escape(label[0].upper() + label[1:])} ({_usd(eq['cascade_cost'])} vs "
            f"{_usd(eq['pre_route_cost'])} per query), "
            "the cascade minus the pre-route classifier: overall "
            f"<b class='{gap_cls}'>{eq['accuracy_gap'] * 100:+.1f} points</b>"
            f"{tail}.</p>"
        )
    labels = [s["strategy"] for s in report["strategies"]]
    parts.append("<div class='charts'>")
    parts.append(_frontier_chart(report))
    parts.append(
        bar_chart(
            labels,
            [
                ("overall accuracy", [s["accuracy"] for s in report["strategies"]]),
                ("long-tail accuracy", [s["long_tail_accuracy"] for s in report["strategies"]]),
                ("savings vs capable-only", [s["savings_vs_capable"] for s in report["strategies"]]),
            ],
            title="Accuracy and savings per strategy",
            width=640,
        )
    )
    parts.append(_calibration_chart(report))
    parts.append("</div>")
    parts.append("<h2>Policy</h2>")
    parts.append(
        f"<p>Thresholds and calibration: {escape(fit['source'])}"
        + (
            f" ({fit['rows']} rows; objective: {escape(fit['objective'])}; train accuracy "
            f"{_p(fit['train_accuracy'])} vs capable {_p(fit['train_capable_accuracy'])}, train savings "
            f"{_p(fit['train_savings'])})"
            if fit["source"] == "fitted on train"
            else ""
        )
        + ".</p>"
    )
    parts.append(
        _table(
            ["tier", "model", "threshold", "calibration points"],
            [
                [
                    escape(t["name"]),
                    escape(t["model"]),
                    "always answers" if t["threshold"] is None else f"{t['threshold']:.4f}",
                    str(len(t["calibration"] or [])),
                ]
                for t in report["policy"]
            ],
            left_cols=2,
        )
    )
    shadow = next((s for s in report["strategies"] if s["strategy"] == "cascade+shadow"), None)
    if shadow:
        n = shadow["notes"]
        parts.append(
            "<p>Shadow scoring ("
            + _p(n["shadow_rate"], 0)
            + " of accepted cheaper answers re-asked to the last tier): disagreement "
            + ", ".join(
                f"{escape(report['policy'][i]['name'])} {_p(v)} of {c}"
                for i, (v, c) in enumerate(zip(n["shadow_disagreement"], n["shadow_samples"], strict=True))
            )
            + ".</p>"
        )
    guarantee = fit.get("guarantee")
    if guarantee:
        parts.append(f"<h2>Guarantee</h2><p>{escape(guarantee['statement'])}</p>")
        parts.append(
            f"<p class='muted'>Method: {escape(guarantee['method'])}; eps {guarantee['eps']:g}, "
            f"delta {guarantee['delta']:g}, n {guarantee['n']}, data sha256 "
            f"<code>{escape(guarantee['dataSha256'][:16])}</code>; {escape(guarantee['assumption'])}.</p>"
        )
    rel = report.get("reliability") or {}
    names = [t["name"] for t in report["policy"]]
    if rel.get("train_out_of_fold"):
        parts.append(
            reliability_section(rel["train_out_of_fold"], names, "Reliability on train (out-of-fold)")
        )
    if rel.get("test") and len(rel["test"]) == len(names):
        parts.append(
            reliability_section(
                rel["test"],
                names,
                "Reliability on test",
                "The policy's calibrated confidence (maps fitted on train)",
            )
        )
    if report.get("drift"):
        parts.append(_drift_section(report["drift"]))
    if report.get("rollout"):
        parts.append(_rollout_section(report["rollout"]))
    if report.get("loop"):
        parts.append(_loop_section(report["loop"]))
    for note in report.get("notes", []):
        parts.append(f"<p class='muted'>Note: {escape(note)}</p>")
    parts.append(
        "<p class='muted'>Long tail: the pooled accuracy over the worst 10% of categories "
        "(with at least 5 test rows) by each strategy's own accuracy. "
        "Cost: the recorded cost of every model call made (a cascade pays for each "
        "tier it tried; shadow calls are included).</p>"
    )
    parts.append(f"<p class='muted'>Generated in {report.get('elapsed_seconds', 0)} s.</p></body></html>")
    return "\n".join(parts)
