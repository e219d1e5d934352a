"""The policy loaders under hostile input (hypothesis): a PolicyError with a message, or a valid
policy; never another exception (no traceback for a user, no crash of a proxy reloading it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierguard.policy import PolicyError, load_policy_spec, load_proxy_config, proxy_config_from_data

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID: dict[str, Any] = {
    "apiVersion": "tierguard.io/v1alpha1",
    "kind": "CascadePolicy",
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {
        "tiers": [
            {"name": "mini", "baseUrl": "http://mini/v1", "model": "m", "confidence": {"threshold": 0.8}},
            {"name": "big", "baseUrl": "http://big/v1", "model": "b", "apiKey": {"env": "KEY"}},
        ],
        "confidence": {"method": "logprob", "aggregate": "quantile", "quantile": 0.1},
        "rollout": {"steps": [{"weight": 5}, {"weight": 50}], "interval": "30s"},
        "proxy": {"maxBodyBytes": 4096, "shadowRate": 0.1},
    },
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


PATHS = paths(VALID)[1:]


def replaced(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def loads_cleanly(data: Any) -> None:
    try:
        proxy_config_from_data(data, "fuzz")
    except PolicyError as err:
        assert str(err).startswith("fuzz")


@FUZZ
@given(st.sampled_from(PATHS), values)
def test_one_field_replaced_by_anything(path: tuple[Any, ...], value: Any) -> None:
    loads_cleanly(replaced(path, value))


@FUZZ
@given(values)
def test_any_document(data: Any) -> None:
    loads_cleanly(data)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_in_a_file(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    f = tmp_path_factory.mktemp("fuzz") / "policy.yaml"
    f.write_bytes(raw)
    for load in (load_proxy_config, load_policy_spec):
        try:
            load(f)
        except PolicyError as err:
            assert str(f) in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20000 + "]" * 20000,  # deep YAML flow sequence
        '{"a":' * 20000 + "1" + "}" * 20000,  # deep JSON
        "a: &x [1]\n" + "".join(f"b{i}: &x{i} [*x, *x, *x]\n" for i in range(3)),  # aliases
        "\ufeff" + json.dumps(VALID),  # a byte-order mark
        json.dumps(VALID) + "\n---\nkind: other\n",  # two documents
    ],
)
def test_pathological_files(tmp_path: Path, text: str) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    try:
        load_proxy_config(f)
    except PolicyError as err:
        assert str(f) in str(err) and "Traceback" not in str(err)


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_bytes(b"tiers: [\xff\xfe]\n")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_proxy_config(f)
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy_spec(f)
