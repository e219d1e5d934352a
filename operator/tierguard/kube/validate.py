"""Checks of a CascadePolicy that passed the API server's schema but cannot work (pure).

The reconciler marks such a policy ``Ready=False`` with the message and touches nothing else.
A valid policy's dangerous settings come back as ``risks`` (see :mod:`tierguard.rollout.risks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..policy import CascadePolicySpec, PolicyError, QualitySLOSpec, parse_policy_spec
from ..rollout.risks import Risk, policy_risks
from ..rollout.slo import validate_slos
from . import autotune
from .render import CONFIG_DIR, MAX_POLICY_NAME


@dataclass(frozen=True)
class Validated:
    spec: CascadePolicySpec | None
    slos: dict[str, QualitySLOSpec] = field(default_factory=dict)
    problem: str | None = None
    risks: tuple[Risk, ...] = ()  # valid but dangerous settings: flagged, not refused

    @property
    def ok(self) -> bool:
        return self.problem is None and self.spec is not None


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def validate_policy(
    name: str, spec_data: Any, slo_bodies: Mapping[str, Mapping[str, Any] | None]
) -> Validated:
    """Validate the spec and resolve its SLO references.

    ``slo_bodies`` maps each referenced QualitySLO name to its object (None: it does not exist).
    """
    if len(name) > MAX_POLICY_NAME:
        return Validated(
            None,
            problem=f"the policy name is {len(name)} characters; at most {MAX_POLICY_NAME} fit its children",
        )
    try:
        spec = parse_policy_spec(spec_data, "spec")
    except PolicyError as err:
        return Validated(None, problem=_one_line(str(err)))
    slos: dict[str, QualitySLOSpec] = {}
    problems: list[str] = _proxy_problems(spec) + autotune.problems(name, spec)
    for ref in spec.slos:
        body = slo_bodies.get(ref.name)
        if body is None or ref.name in slos:
            continue  # unknown names are reported by validate_slos
        try:
            slos[ref.name] = QualitySLOSpec.model_validate(body.get("spec") or {})
        except ValidationError as err:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()[:3]
            )
            problems.append(f"QualitySLO {ref.name!r} is invalid: {detail}")
    invalid = {ref.name for ref in spec.slos if slo_bodies.get(ref.name) is not None and ref.name not in slos}
    refs = [ref for ref in spec.slos if ref.name not in invalid]
    problems += validate_slos(refs, slos, spec.cascade())
    if problems:
        return Validated(spec, slos, "; ".join(problems))
    return Validated(spec, slos, risks=tuple(policy_risks(spec, slos)))


def _overlaps(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _proxy_problems(spec: CascadePolicySpec) -> list[str]:
    """Secret mounts that would hide the proxy's config (or each other)."""
    problems: list[str] = []
    paths = [m.mount_path for m in spec.proxy.secret_mounts]
    for i, path in enumerate(paths):
        if _overlaps(path, CONFIG_DIR):
            problems.append(
                f"spec.proxy.secretMounts[{i}].mountPath {path!r} overlaps the proxy's config directory "
                f"{CONFIG_DIR}: mount the Secret elsewhere (e.g. /var/run/tierguard/...)"
            )
        for j in range(i):
            if _overlaps(path, paths[j]):
                problems.append(
                    f"spec.proxy.secretMounts[{i}].mountPath {path!r} overlaps secretMounts[{j}] "
                    f"({paths[j]!r})"
                )
    return problems
