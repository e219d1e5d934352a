"""Self-contained SVG charts and the page style shared by the HTML reports (replay, calibrate):
no scripts, no remote resources."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.muted{color:#666;font-size:.9em}.good{color:#1a7f37}.bad{color:#b42318}
.charts{display:flex;flex-wrap:wrap;gap:16px}svg{background:#fff;border:1px solid #e5e5e5}
code{background:#f5f5f5;padding:1px 4px}
"""


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str
    line: bool = True
    labels: list[str] = field(default_factory=list)


DASH = "\u2013"


def _title(title: str, width: int) -> str:
    return (
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
        f"{escape(title)}</text>"
    )


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-12:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt_tick(v: float, pct: bool) -> str:
    if pct:
        return f"{v * 100:.0f}%"
    if v == 0:
        return "0"
    if abs(v) < 0.01 or abs(v) >= 1e5:
        return f"{v:.1e}"
    return f"{v:g}"


def scatter_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 520,
    height: int = 360,
    x_pct: bool = False,
    y_pct: bool = True,
    log_x: bool = False,
) -> str:
    """An SVG chart of lines and/or markers with axes, ticks and a legend."""
    pts = [p for s in series for p in s.points if all(math.isfinite(c) for c in p)]
    if not pts:
        return (
            f'<svg width="{width}" height="60" role="img">'
            f'<text x="10" y="35">{escape(title)}: no data</text></svg>'
        )

    def tx(v: float) -> float:
        return math.log10(max(v, 1e-12)) if log_x else v

    xs = [tx(p[0]) for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x = (x1 - x0) * 0.05 or 0.5
    pad_y = (y1 - y0) * 0.08 or 0.05
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    left, right, top, bottom = 64, 16, 30, 48
    legend_h = 16 * len(series)
    h_plot = height - top - bottom
    w_plot = width - left - right

    def sx(v: float) -> float:
        return left + (tx(v) - x0) / (x1 - x0) * w_plot

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * h_plot

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + legend_h}" '
        f'role="img" aria-label="{escape(title)}">',
        _title(title, width),
        f'<rect x="{left}" y="{top}" width="{w_plot}" height="{h_plot}" fill="none" stroke="#999"/>',
    ]
    for t in _nice_ticks(y0, y1):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + w_plot}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{_fmt_tick(t, y_pct)}</text>"
        )
    if log_x:
        xticks = [10.0**e for e in range(math.floor(x0), math.ceil(x1) + 1) if x0 <= e <= x1]
    else:
        xticks = _nice_ticks(x0, x1)
    for t in xticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + h_plot}" stroke="#f0f0f0"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + h_plot + 16}" text-anchor="middle" font-size="11">'
            f"{_fmt_tick(t, x_pct)}</text>"
        )
    out.append(
        f'<text x="{left + w_plot / 2}" y="{top + h_plot + 36}" text-anchor="middle" font-size="12">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(16,{top + h_plot / 2}) rotate(-90)" text-anchor="middle" font-size="12">'
        f"{escape(y_label)}</text>"
    )
    for s in series:
        good = [p for p in s.points if all(math.isfinite(c) for c in p)]
        if s.line and len(good) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(good))
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>')
        r = 3 if s.line else 6
        for i, (x, y) in enumerate(good):
            tip = escape(s.labels[i] if i < len(s.labels) else s.name)
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{s.color}" stroke="#fff">'
                f"<title>{tip}</title></circle>"
            )
    for i, s in enumerate(series):
        y = height + 12 + 16 * i - 8
        mark = (
            f'<line x1="{left}" x2="{left + 18}" y1="{y}" y2="{y}" stroke="{s.color}" stroke-width="2"/>'
            if s.line
            else f'<circle cx="{left + 9}" cy="{y}" r="5" fill="{s.color}"/>'
        )
        out.append(mark + f'<text x="{left + 24}" y="{y + 4}" font-size="11">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    labels: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float | None]]],
    *,
    title: str,
    pct: bool = True,
    log: bool = False,
    width: int = 520,
    value_fmt: str = "{:.1%}",
) -> str:
    """Horizontal grouped bars: one row per label, one bar per group."""
    row_h = 14 * len(groups) + 10
    left, top = 210, 30
    height = top + row_h * len(labels) + 24 + 16 * len(groups)
    vals = [v for _, vs in groups for v in vs if v is not None and v > 0]
    vmax = max(vals) if vals else 1.0
    vmin = min(vals) if vals else 1.0
    w_plot = width - left - 70

    def sw(v: float) -> float:
        if log:
            lo = math.log10(max(vmin / 2, 1e-9))
            return max(2.0, (math.log10(v) - lo) / (math.log10(vmax) - lo + 1e-12) * w_plot)
        return max(1.0, v / vmax * w_plot)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        _title(title, width),
    ]
    for i, lab in enumerate(labels):
        y = top + i * row_h
        out.append(
            f'<text x="{left - 6}" y="{y + row_h / 2 + 2}" text-anchor="end" font-size="11">'
            f"{escape(lab)}</text>"
        )
        for g, (_, vs) in enumerate(groups):
            v = vs[i]
            yy = y + 4 + g * 14
            color = PALETTE[g % len(PALETTE)]
            if v is None:
                out.append(f'<text x="{left + 4}" y="{yy + 10}" font-size="10" fill="#888">n/a</text>')
                continue
            w = sw(v) if v > 0 else 1.0
            out.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="12" fill="{color}"/>')
            out.append(
                f'<text x="{left + w + 4:.1f}" y="{yy + 10}" font-size="10">{value_fmt.format(v)}</text>'
            )
    ly = top + row_h * len(labels) + 8
    for g, (name, _) in enumerate(groups):
        color = PALETTE[g % len(PALETTE)]
        out.append(f'<rect x="{left}" y="{ly + 16 * g}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + 18}" y="{ly + 16 * g + 9}" font-size="11">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


# --- tables ------------------------------------------------------------------------------------
