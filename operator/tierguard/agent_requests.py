"""Request validation for the agent fields of a chat-completions request, as the OpenAI API does it.

Pure functions. :func:`agent_request_error` checks ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, the tool-call structure of ``messages`` and the
features the cascade does not support (audio), field by field, with OpenAI's wording where it is
known. It returns ``(message, param, code)`` for the first problem, or None. The proxy calls it
after its own checks (kept apart from the sampling-parameter checks, which live elsewhere).
"""

from __future__ import annotations

import re
from typing import Any

from .jsonschemas import SchemaProblem, check_schema
from .structured import response_format_error

MAX_TOOLS = 128
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_CHOICES = ("none", "auto", "required")

Problem = tuple[str, str | None, str | None]  # message, param, code


def json_type_name(v: Any) -> str:
    """How the OpenAI API names a JSON value's type in its error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _wrong_type(param: str, expected: str, value: Any) -> Problem:
    return (
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def tools_error(tools: Any) -> Problem | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        return _wrong_type("tools", "an array", tools)
    if not tools:
        return (
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            "tools",
            "empty_array",
        )
    if len(tools) > MAX_TOOLS:
        return (
            f"Invalid 'tools': array too long. Expected an array with maximum length {MAX_TOOLS}, "
            f"but got an array with length {len(tools)} instead.",
            "tools",
            "array_above_max_length",
        )
    names: set[str] = set()
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(tool, dict):
            return _wrong_type(p, "an object", tool)
        if tool.get("type") != "function":
            return (
                f"Invalid value for '{p}.type': only 'function' tools are supported by the cascade, "
                f"got {tool.get('type')!r}.",
                f"{p}.type",
                "invalid_value",
            )
        fn = tool.get("function")
        if fn is None:
            return (
                f"Missing required parameter: '{p}.function'.",
                f"{p}.function",
                "missing_required_parameter",
            )
        if not isinstance(fn, dict):
            return _wrong_type(f"{p}.function", "an object", fn)
        name = fn.get("name")
        if name is None:
            return (
                f"Missing required parameter: '{p}.function.name'.",
                f"{p}.function.name",
                "missing_required_parameter",
            )
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            return (
                f"Invalid '{p}.function.name': string does not match pattern. Expected a string that "
                "matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
                f"{p}.function.name",
                "invalid_value",
            )
        if name in names:
            return f"Invalid 'tools': duplicate function name {name!r}.", "tools", "invalid_value"
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            return _wrong_type(f"{p}.function.description", "a string", fn["description"])
        if "strict" in fn and not isinstance(fn["strict"], bool | None):
            return _wrong_type(f"{p}.function.strict", "a boolean", fn["strict"])
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                return _wrong_type(f"{p}.function.parameters", "an object", params)
            try:
                check_schema(params)
            except SchemaProblem as err:
                return (
                    f"Invalid schema for function '{name}': {err}",
                    f"{p}.function.parameters",
                    "invalid_function_parameters",
                )
    return None


def tool_choice_error(body: dict[str, Any]) -> Problem | None:
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if choice is None:
        return None
    if not tools:
        return (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
            "invalid_value",
        )
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            return (
                f"Invalid value for 'tool_choice': expected one of 'none', 'auto', 'required' or an "
                f"object naming a function, but got {choice!r} instead.",
                "tool_choice",
                "invalid_value",
            )
        return None
    if not isinstance(choice, dict):
        return _wrong_type("tool_choice", "a string or an object", choice)
    if choice.get("type") != "function":
        return (
            "Invalid value for 'tool_choice.type': only 'function' is supported.",
            "tool_choice.type",
            "invalid_value",
        )
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        return (
            "Missing required parameter: 'tool_choice.function.name'.",
            "tool_choice.function.name",
            "missing_required_parameter",
        )
    declared = {
        t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }
    if name not in declared:
        return (
            f"Invalid value for 'tool_choice': function {name!r} is not one of the request's tools.",
            "tool_choice.function.name",
            "invalid_value",
        )
    return None


def messages_tool_error(messages: list[Any]) -> Problem | None:
    """Tool calls and their results must pair up, as the OpenAI API requires."""
    pending: list[str] = []  # tool_call ids of the last assistant message still without a result
    open_ids: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        p = f"messages[{i}]"
        if role == "tool":
            tid = msg.get("tool_call_id")
            if not isinstance(tid, str):
                return (
                    f"Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                    f"'tool_call_id' ({p}).",
                    f"{p}.tool_call_id",
                    "missing_required_parameter",
                )
            if tid not in open_ids:
                return (
                    f"Invalid parameter: messages with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' ({p}.tool_call_id {tid!r}).",
                    f"{p}.tool_call_id",
                    "invalid_value",
                )
            if tid in pending:
                pending.remove(tid)
            continue
        if pending:
            return _unanswered(pending, f"{p}.role")
        open_ids = set()
        calls = msg.get("tool_calls")
        if calls is None:
            continue
        if role != "assistant":
            return (
                f"Invalid parameter: only assistant messages can have 'tool_calls' ({p}).",
                p,
                "invalid_value",
            )
        if not isinstance(calls, list):
            return _wrong_type(f"{p}.tool_calls", "an array", calls)
        for k, call in enumerate(calls):
            cp = f"{p}.tool_calls[{k}]"
            if not isinstance(call, dict):
                return _wrong_type(cp, "an object", call)
            if not isinstance(call.get("id"), str):
                return f"Missing required parameter: '{cp}.id'.", f"{cp}.id", "missing_required_parameter"
            fn = call.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return (
                    f"Missing required parameter: '{cp}.function.name'.",
                    f"{cp}.function.name",
                    "missing_required_parameter",
                )
            if not isinstance(fn.get("arguments"), str):
                return _wrong_type(f"{cp}.function.arguments", "a string", fn.get("arguments"))
            open_ids.add(call["id"])
            pending.append(call["id"])
    return _unanswered(pending, "messages") if pending else None


def _unanswered(pending: list[str], param: str) -> Problem:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        "'tool_call_id'. The following tool_call_ids did not have response messages: " + ", ".join(pending),
        param,
        "invalid_value",
    )


def unsupported_error(body: dict[str, Any]) -> Problem | None:
    """Features a cascade cannot judge: refused with a clear message instead of passed through."""
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        return _unsupported(
            "Audio output is not supported by the tierguard cascade: a tier's spoken answer has no "
            "confidence to judge. Send text requests, or call the model directly.",
            "audio" if body.get("audio") is not None else "modalities",
        )
    for i, msg in enumerate(body.get("messages") or []):
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") in ("input_audio", "file"):
                    return _unsupported(
                        f"Content parts of type {part['type']!r} are not supported by the tierguard cascade.",
                        f"messages[{i}].content[{j}].type",
                    )
    if body.get("functions") is not None or body.get("function_call") is not None:
        return _unsupported(
            "The deprecated 'functions'/'function_call' parameters are not supported: use 'tools' and "
            "'tool_choice'.",
            "functions" if body.get("functions") is not None else "function_call",
        )
    return None


def _unsupported(message: str, param: str) -> Problem:
    return message, param, "unsupported_parameter"


def agent_request_error(body: dict[str, Any]) -> Problem | None:
    """The first problem with the request's agent fields, or None."""
    for problem in (
        unsupported_error(body),
        tools_error(body.get("tools")),
        tool_choice_error(body),
    ):
        if problem is not None:
            return problem
    ptc = body.get("parallel_tool_calls")
    if ptc is not None:
        if not isinstance(ptc, bool):
            return _wrong_type("parallel_tool_calls", "a boolean", ptc)
        if not body.get("tools"):
            return (
                "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when "
                "'tools' are specified.",
                "parallel_tool_calls",
                "invalid_value",
            )
    rf = response_format_error(body.get("response_format"))
    if rf is not None:
        return rf[0], rf[1], "invalid_value"
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages_tool_error(messages)
    return None
