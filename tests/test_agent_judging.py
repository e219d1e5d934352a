"""Tool calls, structured outputs and conversation affinity: the pure judging code (no I/O)."""

import json

import pytest

from tierguard.affinity import AffinityTable
from tierguard.jsonschemas import SchemaProblem, check_schema, schema_error
from tierguard.judging import AnswerCheck, judge_answer
from tierguard.policy import CascadeSpec, TierConfidence
from tierguard.structured import response_format_error, structured_output_problem
from tierguard.toolcalls import (
    StreamedToolCalls,
    ToolCall,
    message_tool_calls,
    tool_call_problem,
    tool_call_raw,
    unknown_tool,
    verification_messages,
)
from tierguard.workload import TICKET_FORMAT as SCHEMA_FORMAT

ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": "^A[0-9]{4}$"}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
    },
}
NOTE_TOOL = {"type": "function", "function": {"name": "add_note"}}  # no schema: any object
TOOLS = [ORDER_TOOL, NOTE_TOOL]


def spec(threshold=0.8, tool_calls=None, tiers=2):
    out = []
    for i in range(tiers):
        conf = {"threshold": threshold}
        if tool_calls and i < tiers - 1:
            conf["toolCalls"] = tool_calls
        out.append(
            {"name": f"t{i}", "baseUrl": "http://127.0.0.1:1/v1", "model": f"m{i}", "confidence": conf}
        )
    return CascadeSpec.model_validate({"tiers": out})


def call(name, args):
    return ToolCall("call_1", name, args if isinstance(args, str) else json.dumps(args))


@pytest.mark.parametrize(
    ("calls", "problem"),
    [
        ([call("lookup_order", {"order_id": "A1234"})], None),
        ([call("add_note", {"anything": [1, 2]})], None),
        ([call("add_note", "")], None),  # empty arguments: {}
        ([call("lookup_order", '{"order_id": "A12')], "not valid JSON"),
        ([call("lookup_order", "[1]")], "not a JSON object"),
        ([call("lookup_order", {"order_id": "B1"})], "does not match '^A[0-9]{4}$'"),
        ([call("lookup_order", {})], "'order_id' is a required property"),
        ([call("lookup_order", {"order_id": "A1234", "x": 1})], "Additional properties"),
        ([call("refund", {})], "not one of the request's tools"),
        ([call("lookup_order", {"order_id": "A1234"}), call("nope", {})], "tool_calls[1] (nope)"),
    ],
)
def test_tool_call_problem(calls, problem):
    found = tool_call_problem(calls, TOOLS)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_an_invalid_tool_schema_is_not_held_against_the_answer():
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]
    assert tool_call_problem([call("f", {"a": 1})], bad) is None


def test_message_tool_calls_reads_an_openai_message():
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"order_id":"A1"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "add_note", "arguments": {"n": 1}}},
        ],
    }
    calls = message_tool_calls(msg)
    assert [c.name for c in calls] == ["lookup_order", "add_note"]
    assert calls[0].arguments == '{"order_id":"A1"}'
    assert json.loads(calls[1].arguments) == {"n": 1}
    assert message_tool_calls({"role": "assistant", "content": "hi"}) == []


def test_streamed_tool_calls_assemble_by_index():
    acc = StreamedToolCalls()
    assert not acc
    acc.add(
        [{"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": ""}}]
    )
    acc.add([{"index": 0, "function": {"arguments": '{"order_'}}])
    acc.add([{"index": 1, "id": "c2", "function": {"name": "add_note", "arguments": "{}"}}])
    acc.add([{"index": 0, "function": {"arguments": 'id":"A1234"}'}}])
    assert acc.names() == ["lookup_order", "add_note"]
    assert acc.calls() == [
        ToolCall("c1", "lookup_order", '{"order_id":"A1234"}'),
        ToolCall("c2", "add_note", "{}"),
    ]
    assert tool_call_problem(acc.calls(), TOOLS) is None
    assert unknown_tool(acc.names(), TOOLS) is None
    assert unknown_tool(["lookup_order", "wipe_db"], TOOLS) == "wipe_db"


@pytest.mark.parametrize(
    ("method", "measured", "problem", "raw"),
    [
        ("self_eval", 0.9, None, 0.9),
        ("logprob", None, None, None),
        ("logprob", 0.7, None, 0.7),
        ("escalate", 0.99, None, None),
        ("accept", None, None, 1.0),
        ("accept", 0.9, "bad args", None),
        ("self_eval", 0.9, "bad args", None),
    ],
)
def test_tool_call_raw(method, measured, problem, raw):
    assert tool_call_raw(method, measured, problem) == raw


@pytest.mark.parametrize(
    ("tier", "raw", "check", "accepted", "reason"),
    [
        (0, 0.9, AnswerCheck("tool_call", "self_eval"), True, "accepted"),
        (0, 0.5, AnswerCheck("tool_call", "self_eval"), False, "low_confidence"),
        (0, None, AnswerCheck("tool_call", "logprob"), False, "no_confidence"),
        (0, None, AnswerCheck("tool_call", "escalate"), False, "tool_call_rule"),
        (0, 1.0, AnswerCheck("tool_call", "accept"), True, "accepted"),
        (0, None, AnswerCheck("tool_call", "accept", tool_call_problem="x"), False, "invalid_tool_call"),
        # a structured output that does not validate escalates even when confident
        (0, 0.99, AnswerCheck("text", structured_problem="not JSON"), False, "invalid_structured_output"),
        (0, 0.5, AnswerCheck("text"), False, "low_confidence"),
        (0, None, AnswerCheck("text"), False, "low_confidence"),
        # the last tier always answers, invalid or not
        (1, None, AnswerCheck("tool_call", "escalate", tool_call_problem="x"), True, "last_tier"),
        (1, None, AnswerCheck("text", structured_problem="x"), True, "last_tier"),
    ],
)
def test_judge_answer(tier, raw, check, accepted, reason):
    j = judge_answer(spec(0.8), tier, raw, check=check)
    assert (j.accepted, j.reason) == (accepted, reason)


def test_verification_messages_show_tools_conversation_and_call():
    conv = [{"role": "system", "content": "You are support."}, {"role": "user", "content": "Where is A1234?"}]
    msgs = verification_messages(conv, TOOLS, [call("lookup_order", {"order_id": "A1234"})])
    assert msgs[:2] == conv
    last = msgs[-1]
    assert last["role"] == "user"
    assert '"name":"lookup_order"' in last["content"]
    assert '{"arguments":{"order_id":"A1234"},"name":"lookup_order"}' in last["content"]
    assert '"pattern":"^A[0-9]{4}$"' in last["content"]  # the tool's schema is shown
    assert last["content"].endswith("Answer with a single letter: Y or N.")


@pytest.mark.parametrize(
    ("text", "fmt", "problem"),
    [
        ("anything", None, None),
        ("anything", {"type": "text"}, None),
        ('{"a": 1}', {"type": "json_object"}, None),
        ("[1, 2]", {"type": "json_object"}, "not a JSON object"),
        ("Sure! {", {"type": "json_object"}, "not valid JSON"),
        ('{"priority": "high", "summary": "x"}', SCHEMA_FORMAT, None),
        ('{"priority": "urgent", "summary": "x"}', SCHEMA_FORMAT, "priority: 'urgent' is not one of"),
        ('{"priority": "low"}', SCHEMA_FORMAT, "'summary' is a required property"),
        ('{"priority": "low"', SCHEMA_FORMAT, "not valid JSON"),
    ],
)
def test_structured_output_problem(text, fmt, problem):
    found = structured_output_problem(text, fmt)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, None),
        (SCHEMA_FORMAT, None),
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_response_format_error(fmt, param):
    found = response_format_error(fmt)
    assert (found[1] if found else None) == param


def test_schema_validation_is_local_and_reports_paths():
    assert schema_error({"a": [1, "x"]}, {"properties": {"a": {"items": {"type": "integer"}}}}) == (
        "a/1: 'x' is not of type 'integer'"
    )
    with pytest.raises(SchemaProblem, match="unresolvable"):
        schema_error({}, {"$ref": "https://example.com/remote.json"})  # never fetched
    with pytest.raises(SchemaProblem):
        check_schema([1, 2])


# --- policy fields --------------------------------------------------------------------------------


def test_unset_agent_fields_leave_the_revision_hash_unchanged():
    base = spec()
    assert "affinity" not in base.model_dump(mode="json", by_alias=True)
    assert "toolCalls" not in base.tiers[0].confidence.model_dump(mode="json", by_alias=True)
    assert base.affinity_mode == "restart"
    assert base.tiers[0].confidence.tool_call_method == "escalate"
    sticky = spec().model_copy(update={"affinity": "sticky"})
    assert sticky.content_hash() != base.content_hash()
    assert spec(tool_calls="self_eval").content_hash() != base.content_hash()
    assert spec(tool_calls="self_eval").tiers[0].confidence.tool_call_method == "self_eval"


def test_tool_call_method_is_validated():
    with pytest.raises(ValueError, match=r"toolCalls|tool_calls"):
        TierConfidence.model_validate({"toolCalls": "maybe"})


# --- affinity table -------------------------------------------------------------------------------

TIERS = ["cheap", "mid", "capable"]


def test_sticky_conversation_starts_at_the_tier_it_escalated_to():
    t = AffinityTable(10, ttl_s=60)
    assert t.start_tier("c1", TIERS, now=0) == 0
    t.record("c1", TIERS, 0, now=0)
    assert len(t) == 0  # never escalated: nothing remembered
    t.record("c1", TIERS, 2, now=1)
    assert t.start_tier("c1", TIERS, now=2) == 2
    t.record("c1", TIERS, 1, now=3)  # never lowered
    assert t.start_tier("c1", TIERS, now=4) == 2
    assert t.start_tier("c2", TIERS, now=4) == 0
    assert t.start_tier(None, TIERS, now=4) == 0
    # a revision without that tier starts at its cheapest
    assert t.start_tier("c1", ["cheap", "other"], now=4) == 0
    # a reload that reorders tiers keeps the name
    assert t.start_tier("c1", ["capable", "cheap"], now=4) == 0
    assert t.start_tier("c1", ["cheap", "capable"], now=4) == 1


def test_entries_expire_after_inactivity_and_activity_refreshes_them():
    t = AffinityTable(10, ttl_s=60)
    t.record("c1", TIERS, 1, now=0)
    t.record("c1", TIERS, 0, now=50)  # a cheap turn refreshes the expiry
    assert t.start_tier("c1", TIERS, now=100) == 1
    assert t.start_tier("c1", TIERS, now=111) == 0
    assert len(t) == 0


def test_the_table_is_bounded_least_recently_used_first():
    t = AffinityTable(3, ttl_s=1000)
    for i in range(3):
        t.record(f"c{i}", TIERS, 1, now=i)
    t.start_tier("c0", TIERS, now=3)  # a lookup alone does not refresh recency
    t.record("c0", TIERS, 1, now=4)  # a recorded turn does
    t.record("c3", TIERS, 2, now=5)
    assert len(t) == 3
    assert t.start_tier("c1", TIERS, now=6) == 0  # evicted
    assert [t.start_tier(k, TIERS, now=6) for k in ("c0", "c2", "c3")] == [1, 1, 2]
    t.resize(1, 1000)
    assert len(t) == 1 and t.start_tier("c3", TIERS, now=7) == 2
    with pytest.raises(ValueError):
        AffinityTable(0, 1)
