import textwrap

import pytest

from tierguard.policy import (
    CAPABLE_ONLY,
    CascadeSpec,
    PolicyError,
    ProxyConfig,
    Revision,
    load_proxy_config,
    parse_duration,
    parse_policy_spec,
)

TWO_TIERS = {
    "tiers": [
        {"name": "mini", "baseUrl": "http://127.0.0.1:9101/v1", "model": "gpt-4o-mini"},
        {"name": "big", "baseUrl": "http://127.0.0.1:9102/v1", "model": "gpt-4o"},
    ]
}


def test_example_policy_loads(tmp_path):
    cfg = load_proxy_config("examples/local-policy.yaml")
    assert cfg.policy == "local"
    assert [t.name for t in cfg.stable.cascade.tiers] == ["mini", "capable"]
    assert cfg.stable.cascade.tiers[0].confidence.threshold == 0.8
    assert cfg.canary is None and cfg.canary_weight == 0


def test_bare_spec_and_snake_case_accepted():
    spec = parse_policy_spec(
        {"tiers": [dict(t, base_url=t.pop("baseUrl")) for t in [dict(x) for x in TWO_TIERS["tiers"]]]}
    )
    assert spec.tiers[1].base_url == "http://127.0.0.1:9102/v1"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["tiers"].pop(), "tiers"),
        (lambda d: d["tiers"][0].update(name="Bad_Name"), "tiers.0.name"),
        (lambda d: d["tiers"][0].update(baseUrl="ftp://x"), "tiers.0.baseUrl"),
        (lambda d: d["tiers"][0].update(confidence={"threshold": 1.5}), "threshold"),
        (lambda d: d["tiers"][1].update(name="mini"), "unique"),
        (lambda d: d.update(rollout={"steps": [{"weight": 50}, {"weight": 20}]}), "strictly increasing"),
        (lambda d: d.update(rollout={"steps": [{"weight": 150}]}), "weight"),
        (lambda d: d.update(surprise=1), "surprise"),
        (
            lambda d: d["tiers"][0].update(confidence={"calibration": [[0.5, 0.9], [0.6, 0.1]]}),
            "non-decreasing",
        ),
    ],
)
def test_invalid_specs_name_the_field(mutate, needle):
    import copy

    data = copy.deepcopy(TWO_TIERS)
    mutate(data)
    with pytest.raises(PolicyError) as err:
        parse_policy_spec(data, "p.yaml")
    assert needle in str(err.value)


def test_manifest_with_wrong_api_version_is_rejected(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: example.com/v1\nkind: CascadePolicy\nspec: {}\n")
    with pytest.raises(PolicyError, match="apiVersion"):
        load_proxy_config(f)


def test_unreadable_and_bad_yaml(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_proxy_config(tmp_path / "missing.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("tiers: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_proxy_config(f)


def test_revision_name_is_content_hash():
    a = CascadeSpec.model_validate(TWO_TIERS)
    b = CascadeSpec.model_validate({**TWO_TIERS, "confidence": {"aggregate": "min"}})
    assert Revision.of(a).name == a.content_hash() != b.content_hash()
    assert Revision.of(a, CAPABLE_ONLY).name == CAPABLE_ONLY


def test_proxy_config_round_trip_and_weight_rule(tmp_path):
    cas = CascadeSpec.model_validate(TWO_TIERS)
    cfg = ProxyConfig(
        policy="p", stable=Revision.of(cas, CAPABLE_ONLY), canary=Revision.of(cas), canary_weight=10
    )
    f = tmp_path / "cfg.yaml"
    import yaml

    f.write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    again = load_proxy_config(f)
    assert again == cfg and again.config_hash() == cfg.config_hash()
    with pytest.raises(ValueError, match="canary"):
        ProxyConfig(policy="p", stable=Revision.of(cas), canary_weight=5)


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_yaml_text_manifest(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        textwrap.dedent("""
        apiVersion: tierguard.io/v1alpha1
        kind: CascadePolicy
        metadata: {name: shop, namespace: prod}
        spec:
          tiers:
            - {name: a, baseUrl: "http://a:1/v1", model: x}
            - {name: b, baseUrl: "http://b:1/v1", model: y}
    """)
    )
    cfg = load_proxy_config(f)
    assert (cfg.policy, cfg.namespace) == ("shop", "prod")
