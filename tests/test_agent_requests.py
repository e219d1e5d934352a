"""Request validation of the agent fields (tools, tool_choice, response_format, tool messages)."""

import pytest

from tierguard.agent_requests import agent_request_error
from tierguard.workload import TICKET_FORMAT, TOOLS

USER = {"role": "user", "content": "hi"}
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}
ASSISTANT_CALL = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "{}"}


def body(**extra):
    return {"messages": [USER], **extra}


@pytest.mark.parametrize(
    ("request_body", "param", "code"),
    [
        (body(), None, None),
        (body(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False), None, None),
        (body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search_kb"}}), None, None),
        (body(response_format=TICKET_FORMAT), None, None),
        (body(response_format={"type": "json_object"}), None, None),
        (
            {"messages": [USER, ASSISTANT_CALL, RESULT, {"role": "user", "content": "ok"}], "tools": TOOLS},
            None,
            None,
        ),
        (body(tools="lookup_order"), "tools", "invalid_type"),
        (body(tools=[]), "tools", "empty_array"),
        (
            body(tools=[{"type": "function", "function": {"name": "x"}}] * 129),
            "tools",
            "array_above_max_length",
        ),
        (body(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type", "invalid_value"),
        (body(tools=[{"type": "function"}]), "tools[0].function", "missing_required_parameter"),
        (
            body(tools=[{"type": "function", "function": {}}]),
            "tools[0].function.name",
            "missing_required_parameter",
        ),
        (
            body(tools=[{"type": "function", "function": {"name": "has space"}}]),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            body(
                tools=[
                    {"type": "function", "function": {"name": "a"}},
                    {"type": "function", "function": {"name": "a"}},
                ]
            ),
            "tools",
            "invalid_value",
        ),
        (
            body(tools=[{"type": "function", "function": {"name": "a", "parameters": {"type": "nope"}}}]),
            "tools[0].function.parameters",
            "invalid_function_parameters",
        ),
        (
            body(tools=[{"type": "function", "function": {"name": "a", "parameters": []}}]),
            "tools[0].function.parameters",
            "invalid_type",
        ),
        (body(tool_choice="auto"), "tool_choice", "invalid_value"),  # without tools
        (body(tools=TOOLS, tool_choice="always"), "tool_choice", "invalid_value"),
        (
            body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
            "tool_choice.function.name",
            "invalid_value",
        ),
        (
            body(tools=TOOLS, tool_choice={"type": "function"}),
            "tool_choice.function.name",
            "missing_required_parameter",
        ),
        (body(tools=TOOLS, tool_choice=3), "tool_choice", "invalid_type"),
        (body(parallel_tool_calls=True), "parallel_tool_calls", "invalid_value"),  # without tools
        (body(tools=TOOLS, parallel_tool_calls="yes"), "parallel_tool_calls", "invalid_type"),
        (body(response_format={"type": "yaml"}), "response_format.type", "invalid_value"),
        (body(response_format={"type": "json_schema"}), "response_format.json_schema", "invalid_value"),
        ({"messages": [USER, RESULT]}, "messages[1].tool_call_id", "invalid_value"),  # no call to answer
        (
            {"messages": [USER, ASSISTANT_CALL, {"role": "tool", "content": "{}"}]},
            "messages[2].tool_call_id",
            "missing_required_parameter",
        ),
        ({"messages": [USER, ASSISTANT_CALL, USER]}, "messages[2].role", "invalid_value"),  # result missing
        ({"messages": [USER, ASSISTANT_CALL]}, "messages", "invalid_value"),
        ({"messages": [{**USER, "tool_calls": [CALL]}]}, "messages[0]", "invalid_value"),
        (
            {
                "messages": [
                    USER,
                    {
                        **ASSISTANT_CALL,
                        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {}}}],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            "invalid_type",
        ),
        (
            body(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}),
            "audio",
            "unsupported_parameter",
        ),
        (body(modalities=["audio"]), "modalities", "unsupported_parameter"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_parameter",
        ),
        (body(functions=[{"name": "f"}]), "functions", "unsupported_parameter"),
    ],
)
def test_agent_request_error(request_body, param, code):
    found = agent_request_error(request_body)
    if param is None:
        assert found is None
    else:
        assert found is not None, "expected a problem"
        message, got_param, got_code = found
        assert (got_param, got_code) == (param, code), message
        assert message and "Traceback" not in message
