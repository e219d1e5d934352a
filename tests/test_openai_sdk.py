"""The official ``openai`` Python SDK, unchanged, against a real proxy in front of two simulators.

Sync, async, streaming, tools (whole and streamed), structured outputs through
``client.chat.completions.parse`` (response_format and strict function tools from pydantic
models), and the SDK's error classes for requests the proxy refuses.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from agent_data import (
    HOURS_Q,
    ORDER_Q,
    ORDER_T1,
    REFUND_Q,
    TICKET_BAD_Q,
    TICKET_Q,
    TOOLS,
    agent_proxy,
    agent_sims,
)
from needs import in_ci

if in_ci():
    import openai  # in CI a missing SDK fails instead of skipping
else:
    openai = pytest.importorskip("openai", reason="the openai SDK (pip install openai; in the dev extra)")


class Ticket(BaseModel):
    priority: str
    summary: str


class lookup_order(BaseModel):
    order_id: str


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdk")
    with agent_sims(tmp) as sims, agent_proxy(tmp, sims) as (proc, _log):
        yield proc


@pytest.fixture
def client(proxy):
    with openai.OpenAI(base_url=proxy.url, api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def tier(raw) -> str:
    return raw.headers["x-tierguard-tier"]


def test_sync_text_answer(client):
    raw = client.chat.completions.with_raw_response.create(model="support", messages=HOURS_Q)
    completion = raw.parse()
    assert completion.choices[0].message.content == "We are open 9 to 5."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 120
    assert tier(raw) == "mini"


def test_async_client(proxy):
    async def main():
        async with openai.AsyncOpenAI(base_url=proxy.url, api_key="unused", max_retries=0) as c:
            return await asyncio.gather(
                c.chat.completions.create(model="support", messages=HOURS_Q),
                c.chat.completions.create(model="support", messages=ORDER_T1, tools=TOOLS),
            )

    hours, t1 = asyncio.run(main())
    assert hours.choices[0].message.content == "We are open 9 to 5."
    assert t1.choices[0].message.content == "It has shipped; it arrives on Friday."


def test_streaming_text(client):
    stream = client.chat.completions.create(
        model="support", messages=HOURS_Q, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "We are open 9 to 5."
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 120
    assert len({c.id for c in chunks}) == 1


def test_tool_call_accepted_on_the_cheap_tier(client):
    raw = client.chat.completions.with_raw_response.create(model="support", messages=ORDER_Q, tools=TOOLS)
    msg = raw.parse().choices[0].message
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    (call,) = msg.tool_calls
    assert call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A1234"}
    assert tier(raw) == "mini"  # self-verified, not escalated for being a tool call


def test_invalid_tool_call_escalates(client):
    raw = client.chat.completions.with_raw_response.create(model="support", messages=REFUND_Q, tools=TOOLS)
    (call,) = raw.parse().choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"order_id": "A2222", "amount": 20}
    assert tier(raw) == "large"


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(model="support", messages=ORDER_Q, tools=TOOLS, stream=True)
    name, args, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, json.loads(args), finish) == ("lookup_order", {"order_id": "A1234"}, "tool_calls")


def test_stream_helper_with_tools(client):
    with client.chat.completions.stream(model="support", messages=ORDER_Q, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "lookup_order"


def test_parse_structured_output(client):
    raw = client.chat.completions.with_raw_response.parse(
        model="support", messages=TICKET_Q, response_format=Ticket
    )
    parsed = raw.parse().choices[0].message.parsed
    assert parsed == Ticket(priority="high", summary="App crashes at login.")
    assert tier(raw) == "mini"


def test_parse_escalates_an_answer_that_breaks_the_schema(client):
    raw = client.chat.completions.with_raw_response.parse(
        model="support", messages=TICKET_BAD_Q, response_format=Ticket
    )
    assert raw.parse().choices[0].message.parsed == Ticket(priority="high", summary="Parcel lost.")
    assert tier(raw) == "large"


def test_parse_strict_function_tools(client):
    completion = client.chat.completions.parse(
        model="support", messages=ORDER_Q, tools=[openai.pydantic_function_tool(lookup_order)]
    )
    (call,) = completion.choices[0].message.tool_calls
    assert call.function.parsed_arguments == lookup_order(order_id="A1234")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"n": 2}, "n"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ],
)
def test_refused_requests_raise_the_sdk_error(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="support", messages=HOURS_Q, **kwargs)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.body["message"]
