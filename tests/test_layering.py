"""The package's floors, as import rules (the contract an import-linter config would state).

- Decision code stays free of I/O: the pure modules never import the adapters or network libraries.
- Library code never imports the entry point (``cli``): errors meant for the user live in ``errors``.
- The commands (calibrate, replay, sim, proxy, kube) never import each other: what two of them
  share lives on a lower floor (``outcomes``, ``calibration``, ``judging``, ``cascade``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "operator" / "tierguard"
PURE = [
    "errors.py",
    "calibration.py",
    "answers.py",
    "confidence.py",
    "cascade.py",
    "judging.py",
    "policy.py",
    "outcomes.py",
    "metric_names.py",
    "drift.py",
    "gaptest.py",
    "guarantee.py",
    "rollout",
    "affinity.py",
    "agent_requests.py",
    "jsonschemas.py",
    "structured.py",
    "toolcalls.py",
    "workload.py",
    "review/redact.py",
    "review/novelty.py",
    "review/sampling.py",
    "review/estimate.py",
    "review/tune.py",
    "review/tune_apply.py",
    "cron.py",
    "review/outcome_events.py",
]
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


COMMANDS = {
    "calibrate": "tierguard.calibrate",
    "replay": "tierguard.replay",
    "sim": "tierguard.sim",
    "proxy": "tierguard.proxy",
    "kube": "tierguard.kube",
}
ENTRY_POINTS = {"cli.py", "__main__.py"}


def _library() -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if str(p.relative_to(PKG)) not in ENTRY_POINTS]


def _command_of(path: Path) -> str | None:
    rel = path.relative_to(PKG)
    name = rel.parts[0].removesuffix(".py")
    return name if name in COMMANDS else None


def _reaches(imports: set[str], module: str) -> list[str]:
    return sorted(m for m in imports if m == module or m.startswith(module + "."))


@pytest.mark.parametrize("path", _library(), ids=lambda p: str(p.relative_to(PKG)))
def test_library_code_never_imports_the_entry_point(path: Path) -> None:
    bad = _reaches(_imports(path), "tierguard.cli")
    assert not bad, f"{path.relative_to(PKG)} imports {bad}: raise tierguard.errors.UserError instead"


@pytest.mark.parametrize("path", _library(), ids=lambda p: str(p.relative_to(PKG)))
def test_commands_never_import_each_other(path: Path) -> None:
    own = _command_of(path)
    found = _imports(path)
    bad = [m for name, module in COMMANDS.items() if name != own for m in _reaches(found, module)]
    assert not bad, f"{path.relative_to(PKG)} imports {bad}: share it through a lower floor"


def test_the_command_check_tells_calibrate_from_calibration() -> None:
    imports = _imports(PKG / "replay" / "main.py")
    assert "tierguard.calibration" in imports
    assert not _reaches(imports, "tierguard.calibrate")
    assert _command_of(PKG / "replay" / "main.py") == "replay"
    assert _command_of(PKG / "calibration.py") is None


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_the_package_does_not_import_test_only_dependencies(path: Path) -> None:
    bad = _reaches(_imports(path), "httpx")  # the tests' HTTP client (pyproject.toml: dev extra)
    assert not bad, f"{path.relative_to(PKG)} imports {bad}: not a runtime dependency"
