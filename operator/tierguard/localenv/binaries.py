"""Locating (and, if needed, building) the pinned control-plane binaries (tests and ``tierguard demo``).

Binaries are built by ``tests/k8senv/build.sh`` into
``${TIERGUARD_BIN_DIR:-~/.cache/tierguard/bin}``; the versions are pinned in
``tests/k8senv/go.mod``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

# a source checkout: operator/tierguard/localenv/ -> the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]
K8SENV_DIR = REPO_ROOT / "tests" / "k8senv"
BUILD_SCRIPT = K8SENV_DIR / "build.sh"

# binary name -> module whose version the binary is built from
MODULES = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes",
    "kube-controller-manager": "k8s.io/kubernetes",
    "helm": "helm.sh/helm/v3",
    "kubelet": "k8s.io/kubernetes",
    "kube-scheduler": "k8s.io/kubernetes",
    "kube-proxy": "k8s.io/kubernetes",
    "kubectl": "k8s.io/kubernetes",
}
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "kubectl")

PROMETHEUS_BINARY = "/usr/bin/prometheus"


class MissingBinaryError(RuntimeError):
    pass


def bin_dir() -> Path:
    env = os.environ.get("TIERGUARD_BIN_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tierguard" / "bin"


def binary_path(name: str) -> Path:
    return bin_dir() / name


def pinned_version(name: str) -> str | None:
    """The version go.mod pins for the module ``name`` is built from."""
    module = MODULES[name]
    try:
        text = (K8SENV_DIR / "go.mod").read_text()
    except FileNotFoundError:
        return None
    m = re.search(rf"^\s*{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    return m.group(1) if m else None


def is_current(name: str) -> bool:
    """True if ``name`` is built and its stamp matches the version pinned in go.mod."""
    path = binary_path(name)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    stamp = bin_dir() / ".stamps" / name
    version = pinned_version(name)
    if version is None or not stamp.is_file():
        return True  # built by hand / outside the repo: trust it
    text = stamp.read_text()  # "<package>@<version> <go version> go.sum:<hash>"
    return text.startswith(MODULES[name]) and f"@{version} " in text


def missing(names: Iterable[str]) -> list[str]:
    return [n for n in names if not is_current(n)]


def ensure_binaries(names: Iterable[str], build: bool = True) -> dict[str, Path]:
    """Return paths of the requested binaries, running build.sh for missing ones.

    Building kube-apiserver from source takes several minutes on a small machine
    (cached afterwards). Progress goes straight to the real stderr so it is
    visible under pytest's output capture.
    """
    names = list(names)
    todo = missing(names)
    if todo:
        if not build or os.environ.get("TIERGUARD_NO_BUILD"):
            raise MissingBinaryError(
                f"missing test binaries {todo} in {bin_dir()}; build them with {BUILD_SCRIPT} "
                f"(or run .ci/install.sh)"
            )
        if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
            raise MissingBinaryError(
                f"missing test binaries {todo} in {bin_dir()} and no 'go' toolchain on PATH to "
                f"build them; install Go >= 1.26 and run {BUILD_SCRIPT} (or .ci/install.sh)"
            )
        err = sys.__stderr__ or sys.stderr
        print(
            f"\n[tierguard] building {todo} with {BUILD_SCRIPT} "
            f"(several minutes the first time; cached in {bin_dir()})",
            file=err,
            flush=True,
        )
        result = subprocess.run(["bash", str(BUILD_SCRIPT), *todo], stdout=err, stderr=err, check=False)
        if result.returncode != 0:
            raise MissingBinaryError(
                f"{BUILD_SCRIPT} {' '.join(todo)} failed with exit code {result.returncode}"
            )
        still = missing(todo)
        if still:
            raise MissingBinaryError(f"{BUILD_SCRIPT} ran but {still} are still missing in {bin_dir()}")
    return {n: binary_path(n) for n in names}


def prometheus_binary() -> Path:
    env = os.environ.get("TIERGUARD_PROMETHEUS")
    candidates = [env] if env else [PROMETHEUS_BINARY, shutil.which("prometheus")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise MissingBinaryError(
        "Prometheus server binary not found (expected /usr/bin/prometheus from Debian's "
        "'prometheus' package; run .ci/install.sh or set TIERGUARD_PROMETHEUS)"
    )
