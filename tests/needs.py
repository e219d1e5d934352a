"""What a test needs from outside the repository, and what happens when it is missing.

Locally a missing piece (the Prometheus binary, the shared recorded outcomes, Chromium) skips
the test with the reason. In CI (``CI`` set to anything but empty, ``0`` or ``false``) the
same piece is installed by ``.ci/install.sh``, so its absence is a failure: a suite that passes
by skipping proves nothing.

    from needs import shared_data, prometheus

    def test_on_recorded_data():
        path = shared_data()            # skips locally, fails in CI when the file is absent
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_RELATIVE = Path("data") / "zellinger_llm_cascades" / "cascade_outcomes.jsonl"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the running test with ``reason``; fail it instead in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing dependency is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def shared_data_path() -> Path:
    """Where the shared recorded outcomes are expected: ``$TIERGUARD_SHARED`` (the ``shared``
    directory) or ``../shared`` next to the repository."""
    root = os.environ.get("TIERGUARD_SHARED")
    return (Path(root) if root else REPO.parent / "shared") / SHARED_RELATIVE


def shared_data() -> Path:
    """The shared recorded outcomes file, or skip (locally) / fail (CI)."""
    path = shared_data_path()
    if not path.is_file():
        unavailable(f"shared recorded outcomes not present at {path} (set TIERGUARD_SHARED)")
    return path


def prometheus() -> Path:
    """The Prometheus server binary, or skip (locally) / fail (CI)."""
    from tierguard.localenv.binaries import MissingBinaryError, prometheus_binary

    try:
        return prometheus_binary()
    except MissingBinaryError as err:
        unavailable(str(err))


def chromium() -> str:
    """A headless-capable Chromium binary, or skip (locally) / fail (CI)."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    unavailable("no Chromium on PATH (Debian package 'chromium')")


def postgres() -> None:
    """psycopg and the PostgreSQL server binaries, or skip (locally) / fail (CI)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as err:
        unavailable(f"psycopg is not installed (pip install 'tierguard[postgres]'): {err}")
    from infra.postgres import MissingPostgres, postgres_bin_dir

    try:
        postgres_bin_dir()
    except MissingPostgres as err:
        unavailable(str(err))
