"""``tierguard demo`` end to end, as a newcomer runs it: the story happens and the command exits 0,
the HTML report renders in headless Chromium, and no process it started outlives it (also after
Ctrl-C). The wall time is printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import needs
from procs import REPO
from test_replay_html import _png_pixels
from tierguard import dashboard

pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.prometheus]


def demo_command(tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tierguard", "demo", "--plain", "--port", "0",
        "--report", str(tmp / "report.html"), "--workdir", str(tmp / "work"), *extra,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "operator"), "PYTHONUNBUFFERED": "1"}


def leftovers(workdir: Path) -> list[str]:
    """Command lines of live processes that use the demo's work directory (every child does)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmd and int(proc.name) != os.getpid():
            out.append(f"{proc.name}: {cmd[:200]}")
    return out


def chromium_flags(tmp: Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
    ]  # fmt: skip


def test_demo_tells_the_story_and_exits_0(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = subprocess.run(
        demo_command(tmp_path), capture_output=True, text=True, timeout=900, env=env(), cwd=tmp_path
    )
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    out = res.stdout
    for needle in (
        "operator: Promoted: manual promotion of v1",
        "operator: Promoted: analysis passed at step 5/5 (weight 100%): promoted v2 to stable",
        "operator: RolledBack: rolled back canary v3",
        "cheap-tier-quality (tier mini, revision v3)",
        "done in",
    ):
        assert needle in out, needle
    assert out.count("operator: StepAdvanced") >= 4
    assert not leftovers(tmp_path / "work")
    # the wall time is reported (docs and notes), not asserted: it depends on the machine's load
    print(f"\ntierguard demo wall time {wall:.1f}s (story and shutdown); last line: {out.splitlines()[-1]}")

    # the report: every panel of the shipped Grafana dashboard ran against the demo's Prometheus
    # (real proxies, real traffic) without an error and with data
    html = tmp_path / "report.html"
    text = html.read_text()
    panels = {
        m.group(1): (int(m.group(2)), m.group(3))
        for m in re.finditer(
            r'class="panel" data-title="([^"]+)" data-series="(\d+)"(?: data-error="([^"]*)")?', text
        )
    }
    assert sorted(panels) == sorted(p.title for p in dashboard.PANELS), panels
    for title, (series, error) in panels.items():
        assert error is None, (title, error)
        assert series >= 1, f"dashboard panel {title!r} returned no series"
    print(f"dashboard panels with data: {len(panels)}/{len(dashboard.PANELS)}: {panels}")

    # the report: offline, and it renders
    browser = needs.chromium()
    dom = subprocess.run(
        [browser, *chromium_flags(tmp_path), "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert 'id="verdict"' in dom and "happened as stated" in dom
    assert dom.count("<svg") == 4 + len(dashboard.PANELS) and "RolledBack" in dom and "StepAdvanced" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *chromium_flags(tmp_path), f"--screenshot={shot}", "--window-size=900,1600", html.as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (900, 1600)
    colours = {px for r in rows[::6] for px in r[::6]}
    red = sum(1 for r in rows[::2] for px in r[::2] if px[0] > 180 and px[1] < 80 and px[2] < 80)
    assert len(colours) > 20 and red > 20  # charts, with v3's disagreement line in red


def _default_sigint() -> None:
    # a test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and a
    # Python child then never sees Ctrl-C: give the demo the terminal's default, as a person has
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo_command(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=tmp_path,
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        seen.append(line)
        if "proxy replicas" in line or time.monotonic() > deadline:
            break
    assert any("proxy replicas" in line for line in seen), "".join(seen)
    assert leftovers(tmp_path / "work")  # the children are running
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err
    assert "stopping every process" in err and "Traceback" not in err
    assert not leftovers(tmp_path / "work")
