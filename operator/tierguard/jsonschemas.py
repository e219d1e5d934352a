"""JSON Schema validation for tool arguments and structured outputs, with compiled validators cached.

Validator: the ``jsonschema`` package (Draft 2020-12 by default, or the draft a schema's
``$schema`` names). It implements every draft OpenAI's tool and ``response_format`` schemas use
(``$defs``/``$ref``, ``anyOf``, ``additionalProperties``, ``enum``...), is pure Python (no native
build in the image) and checks the schema itself, so a malformed schema in a request is reported
as such instead of failing open. Remote ``$ref`` lookups are never made: a reference the schema
does not contain is a schema error.

A schema arrives with every request (an agent sends the same tools each turn), so compiled
validators are kept in a small LRU keyed by the schema's canonical JSON.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

CACHE_SIZE = 512
_EMPTY_REGISTRY: Registry[Any] = Registry()


class SchemaProblem(ValueError):
    """The schema itself is not a valid JSON Schema."""


class _Cache:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()

    def validator(self, schema: Any) -> Any:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
            return found
        if not isinstance(schema, dict | bool):
            raise SchemaProblem("a JSON schema must be an object or a boolean")
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as err:
            raise SchemaProblem(f"invalid JSON schema: {err.message}") from None
        made = cls(schema, registry=_EMPTY_REGISTRY)
        self.items[key] = made
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return made


_cache = _Cache(CACHE_SIZE)


def check_schema(schema: Any) -> None:
    """Raise :class:`SchemaProblem` when ``schema`` is not a usable JSON Schema."""
    _cache.validator(schema)


def schema_error(instance: Any, schema: Any) -> str | None:
    """None when ``instance`` validates against ``schema``, else the first error, with its path.

    Raises :class:`SchemaProblem` when the schema itself is unusable.
    """
    validator = _cache.validator(schema)
    try:
        err = next(iter(validator.iter_errors(instance)), None)
    except Unresolvable as exc:
        raise SchemaProblem(f"invalid JSON schema: unresolvable reference {exc}") from None
    if err is None:
        return None
    assert isinstance(err, ValidationError)
    where = "/".join(str(p) for p in err.absolute_path)
    return f"{where or '(root)'}: {err.message}"[:300]
