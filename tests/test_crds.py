"""The generated CRDs: crds/*.yaml must match the generator, and the schemas must be structural
with the validations the issue asks for. (Applying them to a real API server is covered by the
cluster tests.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from procs import child_env
from tierguard.cli import main as cli_main
from tierguard.kube import crdgen
from tierguard.kube.crdgen import CRDGenError, generate, structural

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "crds"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CRDS / name).read_text())
    assert isinstance(data, dict)
    return data


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    assert isinstance(root, dict)
    return root


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for k, v in node.get("properties", {}).items():
        yield from walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def at(root: dict[str, Any], path: str) -> dict[str, Any]:
    node = root
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def rules(node: dict[str, Any]) -> list[str]:
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


def test_checked_in_crds_match_the_generator() -> None:
    problems = crdgen.check(CRDS)
    assert not problems, "crds/ is out of date; run `tierguard crds --out crds`:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["cascadepolicies.yaml", "qualityslos.yaml"])
def test_schemas_are_structural(name: str) -> None:
    root = schema_of(load(name))
    preserve = []
    for path, node in walk(root):
        for banned in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "const", "title", "default"):
            assert banned not in node, f"{name}{path}: {banned}"
        assert node.get("additionalProperties") is not False, f"{name}{path}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{name}{path}: no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{name}{path}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            preserve.append(path)
        if isinstance(node.get("exclusiveMinimum"), float | int) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            pytest.fail(f"{name}{path}: numeric exclusiveMinimum")
    # unknown fields are kept only where kopf writes its bookkeeping
    assert preserve == ([".status"] if name == "cascadepolicies.yaml" else [])


def test_cascade_policy_crd_metadata() -> None:
    crd = load("cascadepolicies.yaml")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "cascadepolicies.tierguard.io"
    assert spec["group"] == "tierguard.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "CascadePolicy" and spec["names"]["shortNames"] == ["cpol"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Weight"] == ".status.canaryWeight"
    assert columns["Stable"] == ".status.stableRevision"
    assert columns["Canary"] == ".status.canaryRevision"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_quality_slo_crd_metadata() -> None:
    crd = load("qualityslos.yaml")
    assert crd["spec"]["names"]["kind"] == "QualitySLO" and crd["spec"]["names"]["shortNames"] == ["qslo"]
    assert crd["spec"]["group"] == "tierguard.io"
    assert crd["spec"]["versions"][0]["name"] == "v1alpha1"


def test_cascade_policy_validations() -> None:
    root = schema_of(load("cascadepolicies.yaml"))
    spec = at(root, "spec")
    assert "tiers" in spec["required"]
    tiers = at(spec, "tiers")
    assert tiers["minItems"] == 2 and tiers["maxItems"] == 16
    assert tiers["x-kubernetes-list-type"] == "map" and tiers["x-kubernetes-list-map-keys"] == ["name"]
    threshold = at(spec, "tiers.[].confidence.threshold")
    assert (threshold["minimum"], threshold["maximum"]) == (0.0, 1.0)
    point = at(spec, "tiers.[].confidence.calibration.[].[]")
    assert (point["minimum"], point["maximum"]) == (0.0, 1.0)
    steps = at(spec, "rollout.steps")
    assert steps["x-kubernetes-list-map-keys"] == ["weight"]
    assert crdgen.STEPS_INCREASING_RULE in rules(steps)
    weight = at(spec, "rollout.steps.[].weight")
    assert (weight["minimum"], weight["maximum"]) == (1, 100)
    assert at(spec, "rollout.steps.[].pause")["nullable"] is True
    timeout = at(spec, "tiers.[].timeoutSeconds")
    assert timeout["minimum"] == 0.0 and timeout["exclusiveMinimum"] is True
    assert "has(self.env) != has(self.file)" in rules(at(spec, "tiers.[].apiKey"))
    assert at(spec, "tiers.[].baseUrl")["pattern"].startswith("^https?://")


def test_proxy_env_and_secret_mounts_schema() -> None:
    proxy = at(at(schema_of(load("cascadepolicies.yaml")), "spec"), "proxy")
    env = at(proxy, "env")
    assert env["x-kubernetes-list-type"] == "map" and env["x-kubernetes-list-map-keys"] == ["name"]
    assert "has(self.value) != has(self.valueFrom)" in rules(env["items"])
    assert set(at(proxy, "env.[].valueFrom.secretKeyRef")["required"]) == {"name", "key"}
    mounts = at(proxy, "secretMounts")
    assert mounts["x-kubernetes-list-map-keys"] == ["mountPath"]
    assert set(mounts["items"]["required"]) == {"secretName", "mountPath"}
    assert at(proxy, "secretMounts.[].mountPath")["pattern"] == "^/[^:]*$"


def test_status_schema_holds_the_rollout_state() -> None:
    status = at(schema_of(load("cascadepolicies.yaml")), "status")
    for field in (
        "phase",
        "observedGeneration",
        "stableRevision",
        "canaryRevision",
        "canaryWeight",
        "currentStep",
        "stepStartedAt",
        "failedChecks",
        "lastAnalysis",
        "conditions",
        "stable",
        "canary",
        "configHash",
    ):
        assert field in status["properties"], field
    assert "Progressing" in status["properties"]["phase"]["enum"]
    assert at(status, "stepStartedAt")["format"] == "date-time"
    conditions = at(status, "conditions")
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(at(status, "conditions.[]")["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
    verdict = at(status, "lastAnalysis.checks.[].verdict")
    assert verdict["enum"] == ["PASS", "BREACH", "NO_DATA", "ERROR"]
    assert at(status, "stable.cascade.tiers.[].name")["type"] == "string"


def test_quality_slo_validations() -> None:
    spec = at(schema_of(load("qualityslos.yaml")), "spec")
    objectives = at(spec, "objectives")
    assert objectives["x-kubernetes-list-map-keys"] == ["name"]
    item_rules = rules(objectives["items"])
    assert "has(self.signal) != has(self.query)" in item_rules
    assert "has(self.max) || has(self.min) || has(self.maxIncreaseOverStable)" in item_rules
    assert "error_rate" in at(spec, "objectives.[].signal")["enum"]


def test_structural_conversion_rules() -> None:
    defs = {"Inner": {"type": "object", "properties": {"x": {"type": "integer", "title": "X", "default": 1}}}}
    out = structural(
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "opt": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "description": "d"},
                "gt": {"type": "number", "exclusiveMinimum": 0.5},
                "c": {"const": "fixed", "type": "string"},
                "free": {"type": "object"},
            },
        },
        defs,
    )
    assert out["properties"]["opt"] == {
        "description": "d",
        "type": "object",
        "nullable": True,
        "properties": {"x": {"type": "integer"}},
    }
    assert out["properties"]["gt"] == {"type": "number", "minimum": 0.5, "exclusiveMinimum": True}
    assert out["properties"]["c"] == {"type": "string", "enum": ["fixed"]}
    assert out["properties"]["free"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert "additionalProperties" not in out
    with pytest.raises(CRDGenError, match="union of 2 types"):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})
    with pytest.raises(CRDGenError, match="unresolvable"):
        structural({"$ref": "#/$defs/Missing"}, {})
    with pytest.raises(CRDGenError, match="unsupported schema keyword 'oneOf'"):
        structural({"type": "object", "oneOf": []}, {})


# --- the command -------------------------------------------------------------------------------


def test_cli_prints_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["spec"]["names"]["kind"] for d in docs] == ["CascadePolicy", "QualitySLO"]

    out = tmp_path / "crds"
    assert cli_main(["crds", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == set(generate())
    assert cli_main(["crds", "--check", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out

    stale = out / "cascadepolicies.yaml"
    stale.write_text(stale.read_text().replace("shortNames:\n    - cpol", "shortNames:\n    - cp"))
    (out / "qualityslos.yaml").unlink()
    assert cli_main(["crds", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cascadepolicies.yaml: out of date (2 changed lines)" in err
    assert "-    - cp" in err and "+    - cpol" in err
    assert "qualityslos.yaml: missing" in err
    assert "tierguard crds --out" in err


def test_cli_check_without_directory_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tierguard", "crds", "--check", "--out", str(tmp_path / "nope")],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such directory" in proc.stderr and "Traceback" not in proc.stderr
