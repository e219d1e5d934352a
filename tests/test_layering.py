"""Decision code stays free of I/O: the pure modules never import the adapters or network libraries.

(The same contract an import-linter config would state: proxy/kube/sim/replay may import the pure
core, never the reverse.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "operator" / "tierguard"
PURE = ["answers.py", "confidence.py", "cascade.py", "policy.py", "outcomes.py", "metric_names.py", "drift.py", "rollout",
        "review/redact.py", "review/novelty.py", "review/sampling.py", "review/estimate.py"]
FORBIDDEN = (
    "aiohttp",
    "httpx",
    "kopf",
    "kubernetes",
    "prometheus_api_client",
    "prometheus_client",
    "requests",
    "tierguard.proxy",
    "tierguard.kube",
    "tierguard.sim",
    "tierguard.replay",
    "tierguard.metrics.prometheus",
)


def _modules() -> list[Path]:
    out: list[Path] = []
    for name in PURE:
        p = PKG / name
        if p.is_dir():
            out += sorted(p.rglob("*.py"))
        elif p.exists():
            out.append(p)
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg_parts = ["tierguard", *path.relative_to(PKG).parent.parts]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_pure_module_imports_no_io(path: Path) -> None:
    bad = sorted(m for m in _imports(path) for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_the_check_sees_relative_imports() -> None:
    fake = PKG / "rollout" / "decide.py"
    assert any(m.startswith("tierguard.") for m in _imports(fake))
