"""``tierguard calibrate --report``: one self-contained HTML page with the guarantee, the tested
path and out-of-fold reliability diagrams per tier."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from .calibrate import Calibration, guarantee_lines
from .cli import UserError
from .policy import CascadePolicySpec
from .reliability import oof_reliability, reliability_section
from .replay.data import Row
from .replay.report_html import CSS


def render(cal: Calibration, spec: CascadePolicySpec, rows: Sequence[Row]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tierguard calibrate</title>",
        f"<style>{CSS}</style></head><body><h1>tierguard calibrate</h1>",
        f"<p class='muted'>{cal.n_rows} rows</p><h2>Guarantee</h2><pre>",
        escape("\n".join(guarantee_lines(cal))),
        "</pre>",
    ]
    cert = cal.certificate
    if cert is not None and cert.path:
        parts.append(
            "<h2>Thresholds tested (in order)</h2><table><tr><th>raw threshold</th><th>losses</th>"
            "<th>gains</th><th>p-value</th><th>savings</th><th>certified</th></tr>"
        )
        for i, p in enumerate(cert.path):
            ok = i < cert.certified
            parts.append(
                f"<tr><td>{p.raw_threshold:.10g}</td><td>{p.losses}</td><td>{p.gains}</td>"
                f"<td>{p.p_value:.4f}</td><td>{p.savings:.1%}</td>"
                f"<td class='{'good' if ok else 'bad'}'>{'yes' if ok else 'no'}</td></tr>"
            )
        parts.append("</table>")
    parts.append(reliability_section(oof_reliability(spec, rows), [t.name for t in spec.tiers]))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: str, cal: Calibration, spec: CascadePolicySpec, rows: Sequence[Row]) -> None:
    try:
        Path(path).write_text(render(cal, spec, rows))
    except OSError as err:
        raise UserError(f"{path}: cannot write: {err.strerror}") from None
