"""The replay report's HTML: self-contained (no scripts, no remote resources) and rendered by a real browser."""

import re
import shutil
import struct
import subprocess
import zlib

import pytest

from needs import chromium
from test_replay import POLICY, make_rows, tierguard, write_jsonl


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    rows = make_rows(600, seed=5, benchmark="easy") + make_rows(
        600, seed=6, benchmark="hard", difficulty_shift=0.35
    )
    data = write_jsonl(tmp / "o.jsonl", rows, extra_lines=[(2, "not json")])
    policy = tmp / "p.yaml"
    policy.write_text(POLICY)
    out = tmp / "report"
    tierguard(
        "replay", "--data", data, "--policy", policy, "--out", out, "--benchmark", "easy", "--max-accuracy-drop", "0.05",
        "--scenario", "drift", "--drift-from", "easy", "--drift-to", "hard",
        "--shift-at", "1000", "--horizon", "10000", "--runs", "3", "--null-runs", "20", "--quiet",
    )  # fmt: skip
    return out


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html, re.I)  # nothing fetched from anywhere
    assert "@import" not in html
    assert html.count("<table") >= 4  # strategies, policy, drift quality, drift monitors
    assert html.count("<svg") >= 4  # frontier, bars, calibration, detection times
    assert "Guarantee</h2>" in html and "Learn-then-Test" in html
    for name in ("capable-only", "pre-route-classifier", "allowlist", "cascade+shadow", "aggregate-review"):
        assert name in html
    assert "malformed lines skipped" in html


def _png_pixels(data):
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) to rows of pixel tuples."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp : x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


@pytest.mark.slow
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    browser = chromium()  # .ci/install.sh installs it
    html = report_dir / "report.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "<table" in dom and "cascade+shadow" in dom and "<svg" in dom
    # out-of-fold reliability per tier, and the policy's reliability on test, with their ECE
    assert "Reliability on train (out-of-fold)" in dom and "Reliability on test" in dom
    assert dom.count("(ECE ") >= 6  # 3 tiers x (train out-of-fold, test)
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2400", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file(), "Chromium wrote no screenshot"
    shutil.copy(shot, report_dir / "report.png")
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2400)
    colours = {px for r in rows[::8] for px in r[::8]}
    dark = sum(1 for r in rows[::4] for px in r[::4] if sum(px) < 200)
    assert len(colours) > 20  # text, plots and table borders, not a blank page
    assert dark > 500  # there is text on it


def test_calibrate_report_renders_in_headless_chromium(tmp_path):
    browser = chromium()
    data = write_jsonl(tmp_path / "o.jsonl", make_rows(900, seed=4))
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    html = tmp_path / "calibrate.html"
    tierguard(
        "calibrate", "--data", data, "--policy", policy, "--out", tmp_path / "c.yaml",
        "--max-accuracy-drop", "0.05", "--report", html,
    )  # fmt: skip
    text = html.read_text()
    assert "<script" not in text.lower()
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "Reliability (out-of-fold)" in dom and dom.count("<svg") == 3  # one diagram per tier
    assert "Thresholds tested (in order)" in dom and "With probability at least 90%" in dom
