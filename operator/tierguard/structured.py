"""Structured outputs: does an answer honour the request's ``response_format``? Pure functions.

``{"type": "json_object"}``: the answer must parse as a JSON object. ``{"type": "json_schema",
"json_schema": {"schema": {...}}}``: it must parse and validate against the schema. A cheap tier's
answer that does not escalates (``invalid_structured_output``); plain ``text`` is not checked.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .jsonschemas import SchemaProblem, check_schema, schema_error

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def wants_json(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")


def response_format_error(response_format: Any) -> tuple[str, str] | None:
    """(message, param) when a request's ``response_format`` is malformed, as the OpenAI API says."""
    if response_format is None:
        return None
    param = "response_format"
    if not isinstance(response_format, dict):
        return "'response_format' must be an object", param
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return (
            f"Invalid value for 'response_format.type': expected one of 'text', 'json_object', "
            f"'json_schema', but got {kind!r} instead.",
            f"{param}.type",
        )
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return "Missing required parameter: 'response_format.json_schema'.", f"{param}.json_schema"
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            "Invalid 'response_format.json_schema.name': a string of letters, digits, '_' or '-' "
            "(at most 64 characters) is required.",
            f"{param}.json_schema.name",
        )
    if "strict" in spec and not isinstance(spec["strict"], bool | None):
        return "'response_format.json_schema.strict' must be a boolean", f"{param}.json_schema.strict"
    if "schema" in spec:
        try:
            check_schema(spec["schema"])
        except SchemaProblem as err:
            return f"Invalid schema for response_format '{name}': {err}", f"{param}.json_schema.schema"
    return None


def structured_output_problem(text: str, response_format: Any) -> str | None:
    """Why ``text`` does not honour ``response_format`` (None when it does or nothing is asked)."""
    if not wants_json(response_format):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return f"the answer is not valid JSON ({err.msg})"
    if response_format["type"] == "json_object":
        return None if isinstance(value, dict) else "the answer is not a JSON object"
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        return None
    try:
        problem = schema_error(value, schema)
    except SchemaProblem:
        return None  # the request's schema is at fault, not the answer (rejected at validation)
    return None if problem is None else f"the answer does not match the schema: {problem}"
