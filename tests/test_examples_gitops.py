"""The GitOps example's manifests are what the CRDs accept (the same models the CRDs come from)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tierguard.policy import CascadePolicySpec, QualitySLOSpec

GITOPS = Path(__file__).resolve().parent.parent / "examples" / "gitops"


def test_policy_and_slo_are_valid_and_reference_each_other() -> None:
    policy = yaml.safe_load((GITOPS / "policy" / "cascadepolicy.yaml").read_text())
    slo = yaml.safe_load((GITOPS / "policy" / "qualityslo.yaml").read_text())
    spec = CascadePolicySpec.model_validate(policy["spec"])
    slo_spec = QualitySLOSpec.model_validate(slo["spec"])
    assert [s.name for s in spec.slos] == [slo["metadata"]["name"]]
    assert policy["metadata"]["namespace"] == slo["metadata"]["namespace"]
    tiers = {t.name for t in spec.tiers}
    assert all(o.tier is None or o.tier in tiers for o in slo_spec.objectives)
    kustomization = yaml.safe_load((GITOPS / "policy" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["cascadepolicy.yaml", "qualityslo.yaml"]


def test_flux_and_argocd_point_at_the_policy_folder() -> None:
    flux = yaml.safe_load((GITOPS / "flux" / "kustomization.yaml").read_text())
    app = yaml.safe_load((GITOPS / "argocd" / "application.yaml").read_text())
    assert (
        flux["spec"]["path"].removeprefix("./") == app["spec"]["source"]["path"] == "examples/gitops/policy"
    )
    assert (GITOPS / "policy").is_dir()
    assert flux["spec"]["wait"] is True
