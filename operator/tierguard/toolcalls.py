"""Tool-call answers: reading them, checking their arguments, and the self-verification prompt.

Pure functions, no I/O. A chat answer is a *tool call* when its message carries ``tool_calls``
(content usually null). Providers mostly return no log-probabilities for the call's tokens, so a
tier's policy chooses how such an answer gets a confidence (``TierConfidence.toolCalls``):

- ``self_eval``: ask the same tier whether the call is right, with :func:`verification_messages`;
  confidence = P("Y").
- ``logprob``: aggregate the log-probabilities of the call's tokens, where the upstream returns
  them (vLLM does); none returned means no confidence, so the answer escalates (``no_confidence``).
- ``escalate`` / ``accept``: a fixed rule (``accept`` counts as raw confidence 1.0).

Whatever the method, a call whose function is not among the request's tools, whose arguments are
not a JSON object, or whose arguments fail the tool's JSON schema escalates at once
(``invalid_tool_call``) without a confidence call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .jsonschemas import SchemaProblem, schema_error

ToolCallMethod = Literal["self_eval", "logprob", "escalate", "accept"]
DEFAULT_TOOL_CALL_METHOD: ToolCallMethod = "escalate"

# Sent as one user turn after the conversation (tools, response_format and tool_choice dropped);
# {tools} and {calls} are compact JSON. The reply's first-token P("Y") is the confidence.
TOOL_CALL_VERIFY_PROMPT = (
    "You have these tools:\n{tools}\n\n"
    "For the conversation above you proposed this tool call:\n{calls}\n\n"
    "Is this the right tool, with the right arguments, for the last message? "
    "Answer with a single letter: Y or N."
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # as the model wrote it (a JSON text, possibly invalid)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def message_tool_calls(message: Any) -> list[ToolCall]:
    """The function calls of an assistant message (empty when it has none)."""
    if not isinstance(message, dict):
        return []
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    out: list[ToolCall] = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        out.append(
            ToolCall(
                id=str(c.get("id") or ""),
                name=str(fn.get("name") or ""),
                arguments=args if isinstance(args, str) else _compact(args),
            )
        )
    return out


@dataclass
class StreamedToolCalls:
    """Tool calls assembled from streamed ``delta.tool_calls`` pieces (by ``index``)."""

    parts: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, delta_calls: Any) -> None:
        if not isinstance(delta_calls, list):
            return
        for piece in delta_calls:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index", 0)
            slot = self.parts.setdefault(
                index if isinstance(index, int) else 0, {"id": "", "name": "", "arguments": [], "pieces": 0}
            )
            slot["pieces"] += 1
            if isinstance(piece.get("id"), str):
                slot["id"] = piece["id"]
            fn = piece.get("function")
            if isinstance(fn, dict):
                if isinstance(fn.get("name"), str):
                    slot["name"] += fn["name"]
                if isinstance(fn.get("arguments"), str):
                    slot["arguments"].append(fn["arguments"])

    def __bool__(self) -> bool:
        return bool(self.parts)

    def names(self) -> list[str]:
        return [p["name"] for _, p in sorted(self.parts.items())]

    def settled_names(self) -> list[str]:
        """Names that can no longer grow: a later piece of the same call, or a later call, arrived
        (a name may in principle be streamed in pieces; it is only judged once complete)."""
        items = sorted(self.parts.items())
        return [p["name"] for k, (_, p) in enumerate(items) if p["pieces"] > 1 or k < len(items) - 1]

    def calls(self) -> list[ToolCall]:
        return [ToolCall(p["id"], p["name"], "".join(p["arguments"])) for _, p in sorted(self.parts.items())]


def tool_schemas(tools: Any) -> dict[str, Any]:
    """Function name -> its parameters schema (``None`` for a function without one)."""
    out: dict[str, Any] = {}
    if not isinstance(tools, list):
        return out
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters")
    return out


def unknown_tool(names: Sequence[str], tools: Any) -> str | None:
    """The first called name that is not a declared tool (usable on a partial stream)."""
    known = tool_schemas(tools)
    for name in names:
        if name and name not in known:
            return name
    return None


def tool_call_problem(calls: Sequence[ToolCall], tools: Any) -> str | None:
    """Why these calls cannot be accepted as they are, or None.

    Checked per call: a declared function name, arguments that parse as a JSON object, and (when
    the tool has a parameters schema) arguments valid against it. A tool schema that is itself
    invalid is the request's fault and not held against the answer.
    """
    known = tool_schemas(tools)
    for k, call in enumerate(calls):
        where = f"tool_calls[{k}] ({call.name or 'no name'})"
        if call.name not in known:
            return f"{where}: not one of the request's tools"
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as err:
            return f"{where}: arguments are not valid JSON ({err.msg})"
        if not isinstance(args, dict):
            return f"{where}: arguments are not a JSON object"
        schema = known[call.name]
        if schema is None:
            continue
        try:
            problem = schema_error(args, schema)
        except SchemaProblem:
            continue
        if problem is not None:
            return f"{where}: arguments do not match the schema: {problem}"
    return None


def tool_call_raw(method: ToolCallMethod, measured: float | None, problem: str | None) -> float | None:
    """The raw confidence of a tool-call answer under ``method``.

    ``measured`` is what the method measured (P("Y") for ``self_eval``, the aggregated
    log-probabilities for ``logprob``; None when there were none). Invalid calls and the
    ``escalate`` rule have none; ``accept`` counts as 1.0.
    """
    if problem is not None or method == "escalate":
        return None
    if method == "accept":
        return 1.0
    return measured


def verification_messages(messages: Sequence[Any], tools: Any, calls: Sequence[ToolCall]) -> list[Any]:
    """The self-verification conversation for a proposed tool call (see :data:`TOOL_CALL_VERIFY_PROMPT`)."""
    shown_tools = [{"name": name, "parameters": schema} for name, schema in tool_schemas(tools).items()]
    shown_calls = []
    for c in calls:
        try:
            args: Any = json.loads(c.arguments)
        except ValueError:
            args = c.arguments
        shown_calls.append({"name": c.name, "arguments": args})
    prompt = TOOL_CALL_VERIFY_PROMPT.format(tools=_compact(shown_tools), calls=_compact(shown_calls))
    return [*messages, {"role": "user", "content": prompt}]
