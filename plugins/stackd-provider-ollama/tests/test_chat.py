"""/v1/chat/completions through /api/chat: request mapping, answers, streams."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from stackd_provider_ollama.fake import FakeOllama

from stackd import CallContext
from stackd.errors import BadRequest

from .conftest import collect

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}], **extra}


async def test_options_map_into_ollama_options(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    await provider.openai_chat_completion(
        chat(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            max_tokens=50,
            stop="\n",
            seed=7,
            frequency_penalty=0.5,
            presence_penalty=0.25,
            min_p=0.05,
            num_ctx=4096,
            user="someone",
            parallel_tool_calls=True,
        ),
        ctx,
    )
    (body,) = fake.bodies("/api/chat")
    assert body["model"] == "llama3.2"
    assert body["stream"] is False
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "num_predict": 50,
        "stop": ["\n"],
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "min_p": 0.05,
        "num_ctx": 4096,
    }
    assert "format" not in body and "tools" not in body and "keep_alive" not in body


async def test_max_completion_tokens_wins_and_options_passthrough(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    await provider.openai_chat_completion(
        chat(max_tokens=10, max_completion_tokens=20, stop=["a", "b"], options={"repeat_penalty": 1.1}), ctx
    )
    (body,) = fake.bodies("/api/chat")
    assert body["options"] == {"repeat_penalty": 1.1, "num_predict": 20, "stop": ["a", "b"]}


async def test_keep_alive_from_config_and_request(fake: FakeOllama, ctx: CallContext) -> None:
    from .conftest import make_provider

    prov = await make_provider({"url": fake.url, "keep_alive": "10m"})
    try:
        await prov.openai_chat_completion(chat(), ctx)
        await prov.openai_chat_completion(chat(keep_alive=0), ctx)
    finally:
        await prov.close()
    first, second = fake.bodies("/api/chat")
    assert first["keep_alive"] == "10m"
    assert second["keep_alive"] == 0


async def test_non_stream_response_shape(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    result = await provider.openai_chat_completion(chat(), ctx)
    assert result["id"].startswith("chatcmpl-")
    assert result["object"] == "chat.completion"
    assert isinstance(result["created"], int)
    assert result["model"] == "llama3.2"  # the requested name, not Ollama's "llama3.2:latest"
    (choice,) = result["choices"]
    assert choice["message"] == {"role": "assistant", "content": fake.reply}
    assert choice["finish_reason"] == "stop"
    # fake: prompt tokens are words of the prompt, completion tokens are words of the reply
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


async def test_length_done_reason_maps_to_length(provider: Any, ctx: CallContext) -> None:
    result = await provider.openai_chat_completion(chat(max_tokens=3), ctx)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["choices"][0]["message"]["content"] == "The sky is"
    assert result["usage"]["completion_tokens"] == 3


async def test_messages_images_tools_round_trip(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "and the weather in Tokyo?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "11 degrees"}]},
    ]
    await provider.openai_chat_completion(
        {"model": "llama3.2", "messages": messages, "tools": [WEATHER_TOOL]}, ctx
    )
    (body,) = fake.bodies("/api/chat")
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is here?\nand the weather in Tokyo?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
            ],
        },
        {"role": "tool", "content": "11 degrees", "tool_call_id": "call_1", "tool_name": "get_weather"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather in a city",
                "parameters": WEATHER_TOOL["function"]["parameters"],
            },
        }
    ]


async def test_tool_choice_none_drops_tools(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    await provider.openai_chat_completion(chat(tools=[WEATHER_TOOL], tool_choice="none"), ctx)
    assert "tools" not in fake.bodies("/api/chat")[0]


async def test_tool_calls_come_back_openai_shaped(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    result = await provider.openai_chat_completion(chat(tools=[WEATHER_TOOL]), ctx)
    (choice,) = result["choices"]
    assert choice["finish_reason"] == "tool_calls"  # Ollama itself says "stop"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Tokyo"}


async def test_ollama_tool_call_id_is_kept(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.tool_calls = [{"id": "call_abc", "function": {"index": 0, "name": "f", "arguments": {}}}]
    result = await provider.openai_chat_completion(chat(tools=[WEATHER_TOOL]), ctx)
    assert result["choices"][0]["message"]["tool_calls"][0]["id"] == "call_abc"


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "a",
                    "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
                },
            },
            {"type": "object", "properties": {"answer": {"type": "string"}}},
        ),
        ({"type": "text"}, None),
    ],
)
async def test_response_format_maps_to_format(
    provider: Any, fake: FakeOllama, ctx: CallContext, response_format: dict[str, Any], expected: Any
) -> None:
    result = await provider.openai_chat_completion(chat(response_format=response_format), ctx)
    body = fake.bodies("/api/chat")[0]
    assert body.get("format") == expected
    if expected is not None:
        assert orjson.loads(result["choices"][0]["message"]["content"]) == {"answer": fake.reply}


async def test_thinking_becomes_reasoning_content(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.thinking = "Rayleigh, surely."
    result = await provider.openai_chat_completion(chat(think=True), ctx)
    assert fake.bodies("/api/chat")[0]["think"] is True
    assert result["choices"][0]["message"]["reasoning_content"] == "Rayleigh, surely."


async def test_stream_order_and_final_chunk(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    stream = await provider.openai_chat_completion(chat(stream=True), ctx)
    chunks = await collect(stream)
    assert fake.bodies("/api/chat")[0]["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "llama3.2" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    middle = chunks[1:-1]
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == fake.reply
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert all("usage" not in c for c in chunks)


async def test_stream_include_usage(provider: Any, ctx: CallContext) -> None:
    stream = await provider.openai_chat_completion(
        chat(stream=True, max_tokens=2, stream_options={"include_usage": True}), ctx
    )
    chunks = await collect(stream)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["The", " sky"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_stream_tool_calls(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.tool_calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    ]
    chunks = await collect(
        await provider.openai_chat_completion(chat(stream=True, tools=[WEATHER_TOOL]), ctx)
    )
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [tc["index"] for tc in calls] == [0, 1]
    assert [orjson.loads(tc["function"]["arguments"]) for tc in calls] == [
        {"city": "Tokyo"},
        {"city": "Paris"},
    ]
    assert all(tc["type"] == "function" and tc["id"].startswith("call_") for tc in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_thinking_delta(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.thinking = "hmm"
    chunks = await collect(await provider.openai_chat_completion(chat(stream=True), ctx))
    assert chunks[1]["choices"][0]["delta"] == {"reasoning_content": "hmm"}


@pytest.mark.parametrize(
    ("extra", "loc", "needle"),
    [
        ({"n": 2}, "$.n", "n=2 is not supported by remote::ollama"),
        ({"logprobs": True}, "$.logprobs", "logprobs are not supported"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "$.tool_choice", "cannot force a tool call"),
        ({"tools": [{"type": "code_interpreter"}]}, "$.tools[0].type", "only function tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "$.response_format.json_schema.schema",
            "needs its JSON schema",
        ),
        ({"response_format": {"type": "yaml"}}, "$.response_format.type", "unknown response format"),
        ({"stop": [1]}, "$.stop", "expected a string or a list of strings"),
        ({"messages": []}, "$.messages", "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "$.messages[0].role", "unknown role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
                    }
                ]
            },
            "$.messages[0].content[0].image_url.url",
            "data:image/...;base64",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "$.messages[0].content[0].type",
            "'input_audio' is not supported",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ]
            },
            "$.messages[0].tool_calls[0].function.arguments",
            "JSON object encoded as a string",
        ),
    ],
)
async def test_unsupported_or_bad_input_is_400_before_calling_ollama(
    provider: Any, fake: FakeOllama, ctx: CallContext, extra: dict[str, Any], loc: str, needle: str
) -> None:
    with pytest.raises(BadRequest) as info:
        await provider.openai_chat_completion(chat(**extra), ctx)
    assert info.value.status == 400
    assert info.value.errors[0].loc == loc
    assert needle in info.value.message
    assert fake.bodies("/api/chat") == []


async def test_provider_data_is_never_stored(provider: Any, ctx: CallContext) -> None:
    await provider.openai_chat_completion(chat(), ctx)
    assert "never-stored" not in repr(vars(provider))
