"""The native inference routes' translation layer: request structuring and errors, native ->
OpenAI params, OpenAI answers and stream chunks -> native bodies, and the real
``llama-stack-client`` 0.2.12 parsing what comes out."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackd.apis.native.requests import chat_to_openai, completion_to_openai, embeddings_to_openai
from stackd.apis.native.responses import (
    openai_to_chat_response,
    openai_to_completion_response,
    openai_to_embeddings_response,
)
from stackd.apis.native.streams import ChatStreamTranslator, CompletionStreamTranslator
from stackd.apis.native.types import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest
from stackd.convert import converter, structure
from stackd.errors import BadRequest, UpstreamBadResponse

USER = {"role": "user", "content": "hi"}


def chat(**body: Any) -> ChatCompletionRequest:
    return structure({"model_id": "m", "messages": [USER], **body}, ChatCompletionRequest)


def errors_of(body: Any, cls: type = ChatCompletionRequest) -> list[tuple[str, str]]:
    with pytest.raises(BadRequest) as info:
        structure(body, cls)
    return [(e.loc, e.msg) for e in info.value.errors]


def bad_request(fn: Any, *args: Any) -> list[tuple[str, str]]:
    with pytest.raises(BadRequest) as info:
        fn(*args)
    return [(e.loc, e.msg) for e in info.value.errors]


ROLES = "'user', 'system', 'assistant', 'tool'"

# ---- structuring errors --------------------------------------------------------------------


def test_unknown_role_is_reported_at_the_role() -> None:
    body = {"model_id": "m", "messages": [USER, {"role": "bot", "content": "x"}]}
    assert errors_of(body) == [
        ("$.messages[1].role", f"unknown message role 'bot'; expected one of {ROLES}"),
    ]


def test_missing_role() -> None:
    body = {"model_id": "m", "messages": [{"content": "x"}]}
    assert errors_of(body) == [
        ("$.messages[0].role", f"required field missing; a message needs 'role': one of {ROLES}"),
    ]


def test_message_that_is_not_a_mapping() -> None:
    assert errors_of({"model_id": "m", "messages": ["hi"]}) == [
        ("$.messages[0]", f"expected a message (a mapping with 'role': {ROLES}), got 'hi'"),
    ]


def test_missing_messages_and_model() -> None:
    assert errors_of({}) == [
        ("$.model_id", "required field missing"),
        ("$.messages", "required field missing"),
    ]


def test_missing_field_of_a_message() -> None:
    body = {"model_id": "m", "messages": [{"role": "tool", "content": "r"}]}
    assert errors_of(body) == [("$.messages[0].call_id", "required field missing")]


def test_bad_sampling_strategy_type() -> None:
    body = {"model_id": "m", "messages": [USER], "sampling_params": {"strategy": {"type": "beam"}}}
    assert errors_of(body) == [
        (
            "$.sampling_params.strategy.type",
            "unknown sampling strategy type 'beam'; expected one of 'greedy', 'top_p', 'top_k'",
        )
    ]


def test_sampling_value_checks_land_on_their_fields() -> None:
    body = {
        "model_id": "m",
        "messages": [USER],
        "sampling_params": {"strategy": {"type": "top_p", "temperature": 0, "top_p": 1.5}, "max_tokens": -1},
    }
    assert errors_of(body) == [
        (
            "$.sampling_params.strategy.temperature",
            "expected a number greater than 0, got 0; use strategy {type: greedy} for deterministic output",
        ),
        ("$.sampling_params.strategy.top_p", "expected a number in (0, 1], got 1.5"),
        ("$.sampling_params.max_tokens", "expected an integer of at least 0, got -1"),
    ]
    body["sampling_params"] = {"strategy": {"type": "top_k", "top_k": 0}}
    assert errors_of(body) == [
        ("$.sampling_params.strategy.top_k", "expected an integer of at least 1, got 0"),
    ]


def test_wrong_content_type() -> None:
    body = {"model_id": "m", "messages": [{"role": "user", "content": 5}]}
    assert errors_of(body) == [
        (
            "$.messages[0].content",
            "expected a string, a content item ({type: text, text} or {type: image, image}) "
            "or a list of content items, got 5",
        )
    ]


def test_unknown_content_item_type_in_a_list() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "video", "video": "v"}]
    body = {"model_id": "m", "messages": [{"role": "user", "content": content}]}
    assert errors_of(body) == [
        (
            "$.messages[0].content[1].type",
            "unknown content item type 'video'; expected one of 'text', 'image'",
        ),
    ]


def test_image_needs_url_or_data() -> None:
    content = {"type": "image", "image": {}}
    body = {"model_id": "m", "messages": [{"role": "system", "content": content}]}
    assert errors_of(body) == [
        (
            "$.messages[0].content.image",
            "an image needs exactly one of url: {uri: ...} or data: <base64 string>",
        ),
    ]


def test_tool_definition_errors_name_the_parameter() -> None:
    body = {
        "model_id": "m",
        "messages": [USER],
        "tools": [{"tool_name": "f", "parameters": {"city": {"param_type": "str"}, "x": {"description": 3}}}],
        "tool_prompt_format": "xml",
        "response_format": {"type": "regex"},
    }
    assert errors_of(body) == [
        (
            "$.response_format.type",
            "unknown response format type 'regex'; expected one of 'json_schema', 'grammar'",
        ),
        ("$.tools[0].parameters.x.param_type", "required field missing"),
        ("$.tools[0].parameters.x.description", "expected a string or null, got 3"),
        ("$.tool_prompt_format", "expected one of 'json', 'function_tag', 'python_list', got 'xml'"),
    ]


def test_assistant_tool_call_arguments_type() -> None:
    call = {"call_id": "c", "tool_name": "f", "arguments": [1]}
    body = {"model_id": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}
    assert errors_of(body) == [
        ("$.messages[0].tool_calls[0].arguments", "expected a mapping or a JSON string, got a list"),
    ]


def test_embeddings_and_completion_errors() -> None:
    assert errors_of(
        {"model_id": "m", "contents": ["a", 3], "text_truncation": "middle"}, EmbeddingsRequest
    ) == [
        ("$.contents[1]", "expected a string or a content item {type: text, text}, got 3"),
        ("$.text_truncation", "expected one of 'none', 'start', 'end', got 'middle'"),
    ]
    assert errors_of({"model_id": "m", "content": None}, CompletionRequest) == [
        (
            "$.content",
            "expected a string, a content item ({type: text, text} or {type: image, image}) "
            "or a list of content items, got null",
        )
    ]


def test_unknown_extra_fields_are_ignored() -> None:
    body = {
        "model_id": "m",
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "sampling_params": {"strategy": {"type": "greedy", "x": 1}, "new_field": True},
        "something_new": {"a": 1},
    }
    req = structure(body, ChatCompletionRequest)
    assert req.messages[0].content == "hi"


def test_the_bad_request_message_summarises_every_error() -> None:
    with pytest.raises(BadRequest) as info:
        structure({"model_id": 1, "messages": [{"role": "x"}]}, ChatCompletionRequest)
    assert info.value.message == (
        "invalid request: expected a string, got 1 @ $.model_id; "
        f"unknown message role 'x'; expected one of {ROLES} @ $.messages[0].role"
    )
    assert info.value.status == 400


# ---- chat -> OpenAI ------------------------------------------------------------------------

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 8).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 8).decode()


def test_chat_to_openai_full_request() -> None:
    req = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "image": {"url": {"uri": "https://x/cat.png"}}},
                    {"type": "image", "image": {"data": JPEG}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "stop_reason": "end_of_message",
                "tool_calls": [{"call_id": "c1", "tool_name": "get_weather", "arguments": {"city": "Paris"}}],
            },
            {"role": "tool", "call_id": "c1", "content": [{"type": "text", "text": "sunny"}]},
        ],
        sampling_params={
            "strategy": {"type": "top_p", "temperature": 0.7, "top_p": 0.9},
            "max_tokens": 50,
            "repetition_penalty": 1.1,
            "stop": ["\n\n"],
        },
        tools=[
            {
                "tool_name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "city": {"param_type": "str", "description": "City name"},
                    "days": {"param_type": "int", "required": False, "default": 1},
                    "tags": {"param_type": "list[str]", "required": False},
                },
            }
        ],
        tool_choice="required",
        response_format={"type": "json_schema", "json_schema": {"title": "Weather", "type": "object"}},
        logprobs={"top_k": 2},
        stream=True,
    )
    assert chat_to_openai(req, "provider/m") == {
        "model": "provider/m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 50,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Weather", "schema": {"title": "Weather", "type": "object"}},
        },
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "City name"},
                            "days": {"type": "integer", "default": 1},
                            "tags": {"type": "array", "items": {"type": "string"}},
                        },
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": "required",
        "logprobs": True,
        "top_logprobs": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_defaults_are_greedy_and_minimal() -> None:
    assert chat_to_openai(chat(), "p") == {"model": "p", "messages": [USER], "temperature": 0.0}
    # 0 max_tokens and a 1.0 repetition penalty mean "not set"; stream false sends nothing.
    req = chat(sampling_params={"strategy": {"type": "greedy"}, "max_tokens": 0, "repetition_penalty": 1.0})
    assert chat_to_openai(req, "p") == {"model": "p", "messages": [USER], "temperature": 0.0}


def test_top_k_strategy_and_bare_logprobs() -> None:
    req = chat(sampling_params={"strategy": {"type": "top_k", "top_k": 40}}, logprobs={})
    assert chat_to_openai(req, "p") == {"model": "p", "messages": [USER], "top_k": 40, "logprobs": True}


def test_top_p_without_temperature_sends_only_top_p() -> None:
    req = chat(sampling_params={"strategy": {"type": "top_p"}})
    assert chat_to_openai(req, "p") == {"model": "p", "messages": [USER], "top_p": 0.95}


def test_user_context_follows_the_content() -> None:
    req = chat(messages=[{"role": "user", "content": "q", "context": "doc"}])
    assert chat_to_openai(req, "p")["messages"] == [{"role": "user", "content": "q\n\ndoc"}]
    req = chat(messages=[{"role": "user", "content": {"type": "text", "text": "q"}, "context": "doc"}])
    assert chat_to_openai(req, "p")["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "q"},
                {"type": "text", "text": "\n\n"},
                {"type": "text", "text": "doc"},
            ],
        }
    ]


def test_image_data_formats() -> None:
    def url_of(data: str) -> str:
        req = chat(messages=[{"role": "user", "content": {"type": "image", "image": {"data": data}}}])
        return str(chat_to_openai(req, "p")["messages"][0]["content"][0]["image_url"]["url"])

    assert url_of(PNG) == f"data:image/png;base64,{PNG}"
    assert url_of(JPEG) == f"data:image/jpeg;base64,{JPEG}"
    assert url_of("data:image/webp;base64,AAAA") == "data:image/webp;base64,AAAA"
    req = chat(
        messages=[USER, {"role": "user", "content": [{"type": "image", "image": {"data": "not base64!"}}]}]
    )
    assert bad_request(chat_to_openai, req, "p") == [
        ("$.messages[1].content[0].image.data", "expected base64-encoded image bytes")
    ]


def test_assistant_arguments_json_and_string_arguments_pass_unchanged() -> None:
    calls = [
        {"call_id": "a", "tool_name": "f", "arguments": {"x": 1}, "arguments_json": '{"x": 1}'},
        {"call_id": "b", "tool_name": "g", "arguments": "not json"},
    ]
    req = chat(
        messages=[{"role": "assistant", "content": "", "stop_reason": "end_of_turn", "tool_calls": calls}]
    )
    sent = chat_to_openai(req, "p")["messages"][0]["tool_calls"]
    assert [c["function"]["arguments"] for c in sent] == ['{"x": 1}', "not json"]


def test_grammar_response_format_is_refused() -> None:
    req = chat(response_format={"type": "grammar", "bnf": {"root": "x"}})
    assert bad_request(chat_to_openai, req, "p") == [
        (
            "$.response_format.type",
            "grammar response format is not supported; use {type: json_schema, json_schema: {...}}",
        )
    ]


def test_json_schema_without_usable_title_is_named_response() -> None:
    req = chat(
        response_format={"type": "json_schema", "json_schema": {"title": "has spaces", "type": "object"}}
    )
    assert chat_to_openai(req, "p")["response_format"]["json_schema"]["name"] == "response"


def test_empty_messages() -> None:
    assert bad_request(chat_to_openai, chat(messages=[]), "p") == [
        ("$.messages", "at least one message is required")
    ]


TOOLS = [{"tool_name": "f"}, {"tool_name": "g", "description": "G"}]


def test_tool_choice_variants() -> None:
    def sent(**body: Any) -> tuple[Any, Any]:
        params = chat_to_openai(chat(**body), "p")
        return params.get("tools"), params.get("tool_choice")

    f_tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}, "required": []}},
    }
    g_tool = {
        "type": "function",
        "function": {
            "name": "g",
            "description": "G",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    }
    assert sent(tools=TOOLS) == ([f_tool, g_tool], "auto")
    assert sent(tools=TOOLS, tool_config={"tool_choice": "g"}) == (
        [f_tool, g_tool],
        {"type": "function", "function": {"name": "g"}},
    )
    # "none" drops the tools, as 0.2.12 did; without tools nothing tool-related is sent.
    assert sent(tools=TOOLS, tool_choice="none") == (None, None)
    assert sent() == (None, None)
    assert sent(tool_choice="auto", tool_config={"tool_choice": "auto"}) == (None, None)


def test_tool_choice_errors() -> None:
    assert bad_request(chat_to_openai, chat(tools=TOOLS, tool_config={"tool_choice": "h"}), "p") == [
        ("$.tool_config.tool_choice", "tool_choice 'h' is not one of the tools: f, g")
    ]
    assert bad_request(chat_to_openai, chat(tool_choice="required"), "p") == [
        ("$.tool_choice", "tool_choice 'required' needs at least one tool in tools")
    ]
    req = chat(tools=TOOLS, tool_choice="auto", tool_config={"tool_choice": "required"})
    assert bad_request(chat_to_openai, req, "p") == [
        (
            "$.tool_choice",
            "tool_choice 'auto' and tool_config.tool_choice 'required' must match; send only tool_config",
        )
    ]


# ---- completion and embeddings -> OpenAI ---------------------------------------------------


def test_completion_to_openai() -> None:
    req = structure(
        {
            "model_id": "m",
            "content": [{"type": "text", "text": "Once "}, {"type": "text", "text": "upon"}],
            "sampling_params": {
                "strategy": {"type": "top_p", "temperature": 1.0, "top_p": 0.5},
                "max_tokens": 9,
            },
            "response_format": {"type": "json_schema", "json_schema": {"type": "object"}},
            "logprobs": {"top_k": 3},
            "stream": True,
        },
        CompletionRequest,
    )
    assert completion_to_openai(req, "p") == {
        "model": "p",
        "prompt": "Once upon",
        "temperature": 1.0,
        "top_p": 0.5,
        "max_tokens": 9,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": {"type": "object"}},
        },
        "logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    plain = structure({"model_id": "m", "content": {"type": "text", "text": "x"}}, CompletionRequest)
    assert completion_to_openai(plain, "p") == {"model": "p", "prompt": "x", "temperature": 0.0}


def test_completion_refuses_images() -> None:
    image = {"type": "image", "image": {"url": {"uri": "https://x/y.png"}}}
    req = structure({"model_id": "m", "content": [{"type": "text", "text": "a"}, image]}, CompletionRequest)
    assert bad_request(completion_to_openai, req, "p") == [
        ("$.content[1]", "completion takes text only; send images to /v1/inference/chat-completion")
    ]
    req = structure({"model_id": "m", "content": image}, CompletionRequest)
    assert bad_request(completion_to_openai, req, "p")[0][0] == "$.content"


def test_embeddings_to_openai() -> None:
    req = structure(
        {
            "model_id": "m",
            "contents": ["a", {"type": "text", "text": "b"}],
            "output_dimension": 256,
            "text_truncation": "end",
            "task_type": "query",
        },
        EmbeddingsRequest,
    )
    assert embeddings_to_openai(req, "p") == {"model": "p", "input": ["a", "b"], "dimensions": 256}
    image = {"type": "image", "image": {"data": PNG}}
    req = structure({"model_id": "m", "contents": ["a", image]}, EmbeddingsRequest)
    assert bad_request(embeddings_to_openai, req, "p") == [
        ("$.contents[1]", "embeddings take text only; send {type: text, text} or a string")
    ]
    req = structure({"model_id": "m", "contents": []}, EmbeddingsRequest)
    assert bad_request(embeddings_to_openai, req, "p") == [("$.contents", "at least one content is required")]


# ---- OpenAI -> native responses ------------------------------------------------------------

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
METRICS = [
    {"metric": "prompt_tokens", "value": 7, "unit": None},
    {"metric": "completion_tokens", "value": 3, "unit": None},
    {"metric": "total_tokens", "value": 10, "unit": None},
]


def completion_body(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, **extra}
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "p",
        "choices": [choice],
        "usage": USAGE,
    }


def test_openai_to_chat_response_text() -> None:
    assert openai_to_chat_response(completion_body({"role": "assistant", "content": "Hello"})) == {
        "metrics": METRICS,
        "completion_message": {
            "role": "assistant",
            "content": "Hello",
            "stop_reason": "end_of_turn",
            "tool_calls": [],
        },
        "logprobs": None,
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_of_turn"),
        ("length", "out_of_tokens"),
        ("tool_calls", "end_of_message"),
        ("content_filter", "end_of_turn"),
        (None, "end_of_turn"),
    ],
)
def test_chat_finish_reasons(finish: str | None, stop: str) -> None:
    body = completion_body({"role": "assistant", "content": None}, finish)  # type: ignore[arg-type]
    assert openai_to_chat_response(body)["completion_message"]["stop_reason"] == stop


def test_openai_to_chat_response_tool_calls() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "f", "arguments": '{"city": "Paris", "n": 2}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{not json"}},
            {"id": "c3", "type": "function", "function": {"name": "h", "arguments": ""}},
        ],
    }
    body = openai_to_chat_response(completion_body(message, "tool_calls"))
    assert body["completion_message"] == {
        "role": "assistant",
        "content": "",
        "stop_reason": "end_of_message",
        "tool_calls": [
            {
                "call_id": "c1",
                "tool_name": "f",
                "arguments": {"city": "Paris", "n": 2},
                "arguments_json": '{"city": "Paris", "n": 2}',
            },
            {"call_id": "c2", "tool_name": "g", "arguments": "{not json", "arguments_json": None},
            {"call_id": "c3", "tool_name": "h", "arguments": {}, "arguments_json": "{}"},
        ],
    }


def test_tool_call_without_id_gets_one() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
    }
    call = openai_to_chat_response(completion_body(message))["completion_message"]["tool_calls"][0]
    assert call["call_id"].startswith("call_") and len(call["call_id"]) == 29


def test_openai_to_chat_response_logprobs_and_no_usage() -> None:
    logprobs = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Hey", "logprob": -2.5}],
            },
            {"token": "!", "logprob": -0.3, "top_logprobs": []},
        ]
    }
    body = completion_body({"role": "assistant", "content": "Hi!"}, logprobs=logprobs)
    del body["usage"]
    out = openai_to_chat_response(body)
    assert out["logprobs"] == [
        {"logprobs_by_token": {"Hi": -0.1, "Hey": -2.5}},
        {"logprobs_by_token": {"!": -0.3}},
    ]
    assert out["metrics"] is None


@pytest.mark.parametrize(
    "body", [{}, {"choices": []}, {"choices": [None]}, [], {"choices": [{"finish_reason": "stop"}]}]
)
def test_chat_upstream_without_a_message_is_502(body: Any) -> None:
    with pytest.raises(UpstreamBadResponse) as info:
        openai_to_chat_response(body)
    assert info.value.status == 502
    assert "chat.completion" in info.value.message


def text_completion(text: str, finish: str | None = "stop", logprobs: Any = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
    return {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "model": "p",
        "choices": [choice],
        "usage": USAGE,
    }


def test_openai_to_completion_response() -> None:
    assert openai_to_completion_response(text_completion(" upon a time", "length")) == {
        "metrics": METRICS,
        "content": " upon a time",
        "stop_reason": "out_of_tokens",
        "logprobs": None,
    }
    assert openai_to_completion_response(text_completion("done<|eot_id|>", "length"))["content"] == "done"
    assert openai_to_completion_response(text_completion("done<|eot_id|>"))["stop_reason"] == "end_of_turn"
    assert openai_to_completion_response(text_completion("call<|eom_id|>"))["stop_reason"] == "end_of_message"
    assert openai_to_completion_response(text_completion("x", "stop"))["stop_reason"] == "end_of_turn"
    top = {
        "tokens": ["a", "b"],
        "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{"a": -1.0, "c": -3.0}, {"b": -2.0}],
    }
    assert openai_to_completion_response(text_completion("ab", logprobs=top))["logprobs"] == [
        {"logprobs_by_token": {"a": -1.0, "c": -3.0}},
        {"logprobs_by_token": {"b": -2.0}},
    ]
    chosen_only = {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0], "top_logprobs": None}
    assert openai_to_completion_response(text_completion("ab", logprobs=chosen_only))["logprobs"] == [
        {"logprobs_by_token": {"a": -1.0}},
        {"logprobs_by_token": {"b": -2.0}},
    ]
    with pytest.raises(UpstreamBadResponse):
        openai_to_completion_response({"object": "error"})


def test_openai_to_embeddings_response_sorts_by_index() -> None:
    resp = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        ],
        "model": "p",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert openai_to_embeddings_response(resp) == {"embeddings": [[0.1, 0.2], [0.3, 0.4]]}
    for bad in ({}, {"data": [{"index": 0, "embedding": "AAAA"}]}, {"data": "x"}):
        with pytest.raises(UpstreamBadResponse) as info:
            openai_to_embeddings_response(bad)
        assert info.value.message == "the upstream embeddings answer has no data[].embedding lists"


# ---- streams -------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "p",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}],
    }


USAGE_CHUNK = {
    "id": "x",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "p",
    "choices": [],
    "usage": USAGE,
}


def event(
    kind: str, delta: dict[str, Any], stop: str | None = None, logprobs: Any = None, metrics: Any = None
) -> dict[str, Any]:
    return {
        "event": {"event_type": kind, "delta": delta, "logprobs": logprobs, "stop_reason": stop},
        "metrics": metrics,
    }


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def run_chat_stream(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    translator = ChatStreamTranslator()
    out: list[dict[str, Any]] = []
    for c in chunks:
        out.extend(translator.feed(c))
    out.extend(translator.finish())
    return out


def test_text_stream_with_usage() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        USAGE_CHUNK,
    ]
    assert run_chat_stream(chunks) == [
        event("start", text("")),
        event("progress", text("Hel")),
        event("progress", text("lo")),
        event("complete", text(""), "end_of_turn", metrics=METRICS),
    ]


def test_stream_with_no_chunks_and_no_finish_reason() -> None:
    assert run_chat_stream([]) == [event("start", text("")), event("complete", text(""), "end_of_message")]
    assert run_chat_stream([chunk({"content": "a"})])[-1] == event("complete", text(""), "end_of_message")


def test_content_in_the_finishing_chunk_is_a_progress_event() -> None:
    assert run_chat_stream([chunk({"content": "end"}, "length")]) == [
        event("start", text("")),
        event("progress", text("end")),
        event("complete", text(""), "out_of_tokens"),
    ]


def tool_delta(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    call: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        call.update(id=id, type="function")
    return {"tool_calls": [call]}


def test_tool_calls_split_across_chunks() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk(tool_delta(0, id="c1", name="get_weather", args="")),
        chunk(tool_delta(0, args='{"ci')),
        chunk(tool_delta(0, args='ty": "Par')),
        chunk(tool_delta(1, id="c2", name="get_time", args='{"tz"')),
        chunk(tool_delta(0, args='is"}')),
        chunk(tool_delta(1, args=': "CET"}')),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
    ]
    assert run_chat_stream(chunks) == [
        event("start", text("")),
        event("progress", text("Let me check.")),
        event(
            "progress",
            {
                "type": "tool_call",
                "tool_call": {
                    "call_id": "c1",
                    "tool_name": "get_weather",
                    "arguments": {"city": "Paris"},
                    "arguments_json": '{"city": "Paris"}',
                },
                "parse_status": "succeeded",
            },
            "end_of_message",
        ),
        event(
            "progress",
            {
                "type": "tool_call",
                "tool_call": {
                    "call_id": "c2",
                    "tool_name": "get_time",
                    "arguments": {"tz": "CET"},
                    "arguments_json": '{"tz": "CET"}',
                },
                "parse_status": "succeeded",
            },
            "end_of_message",
        ),
        event("complete", text(""), "end_of_message", metrics=METRICS),
    ]


def test_invalid_tool_arguments_fail_to_parse() -> None:
    chunks = [
        chunk(tool_delta(0, id="c1", name="f", args='{"a": ')),
        chunk(tool_delta(0, args="oops")),
        chunk({}, "tool_calls"),
    ]
    assert run_chat_stream(chunks) == [
        event("start", text("")),
        event(
            "progress",
            {"type": "tool_call", "tool_call": 'f({"a": oops)', "parse_status": "failed"},
            "end_of_message",
        ),
        event("complete", text(""), "end_of_message"),
    ]


def test_tool_call_without_finish_reason_is_flushed_at_the_end() -> None:
    out = run_chat_stream([chunk(tool_delta(0, id="c1", name="f", args="{}"))])
    assert out[1]["event"]["delta"]["parse_status"] == "succeeded"
    assert out[1]["event"]["stop_reason"] is None
    assert out[2] == event("complete", text(""), "end_of_message")


def test_repeated_whole_name_is_not_doubled() -> None:
    chunks = [
        chunk(tool_delta(0, id="c", name="f", args="{")),
        chunk(tool_delta(0, name="f", args="}")),
        chunk({}, "tool_calls"),
    ]
    assert run_chat_stream(chunks)[1]["event"]["delta"]["tool_call"]["tool_name"] == "f"


def test_stream_logprobs() -> None:
    lp = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "top_logprobs": [{"token": "Hi", "logprob": -0.5}, {"token": "Yo", "logprob": -1.5}],
            }
        ]
    }
    out = run_chat_stream([chunk({"content": "Hi"}, logprobs=lp)])
    assert out[1] == event("progress", text("Hi"), logprobs=[{"logprobs_by_token": {"Hi": -0.5, "Yo": -1.5}}])


def test_completion_stream() -> None:
    def c(t: str, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {
            "id": "x",
            "object": "text_completion",
            "created": 1,
            "model": "p",
            "choices": [{"index": 0, "text": t, "finish_reason": finish, "logprobs": logprobs}],
        }

    translator = CompletionStreamTranslator()
    out = []
    lp = {"tokens": [" a"], "token_logprobs": [-0.2], "top_logprobs": [{" a": -0.2, " b": -1.0}]}
    for item in (c("Once"), c(""), c(" a", logprobs=lp), c("", "length"), {"choices": [], "usage": USAGE}):
        out.extend(translator.feed(item))
    out.extend(translator.finish())
    assert out == [
        {"delta": "Once", "stop_reason": None, "logprobs": None, "metrics": None},
        {
            "delta": " a",
            "stop_reason": None,
            "logprobs": [{"logprobs_by_token": {" a": -0.2, " b": -1.0}}],
            "metrics": None,
        },
        {"delta": "", "stop_reason": "out_of_tokens", "logprobs": None, "metrics": METRICS},
    ]
    translator = CompletionStreamTranslator()
    assert translator.feed(c("<|eot_id|>")) == []
    assert translator.finish() == [
        {"delta": "", "stop_reason": "end_of_turn", "logprobs": None, "metrics": None}
    ]
    assert CompletionStreamTranslator().finish()[0]["stop_reason"] is None


# ---- properties ----------------------------------------------------------------------------

_texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)


def _split(s: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(s) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(s[last:p])
        last = p
    pieces.append(s[last:])
    return [p for p in pieces if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=_texts,
    arguments=st.dictionaries(_texts, _json_values, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    finish=st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
)
def test_streaming_agrees_with_the_whole_answer(
    content: str, arguments: dict[str, Any], cuts: list[int], finish: str
) -> None:
    """However the upstream splits text and tool arguments, the stream adds up to the
    non-streamed translation of the same answer."""
    raw = json.dumps(arguments)
    whole = openai_to_chat_response(
        completion_body(
            {
                "role": "assistant",
                "content": content,
                "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "f", "arguments": raw}}],
            },
            finish,
        )
    )
    chunks = [chunk({"content": piece}) for piece in _split(content, cuts)]
    chunks.append(chunk(tool_delta(0, id="c9", name="f", args="")))
    chunks += [chunk(tool_delta(0, args=piece)) for piece in _split(raw, cuts)]
    chunks += [chunk({}, finish), USAGE_CHUNK]
    events = [e["event"] for e in run_chat_stream(chunks)]
    streamed_text = "".join(e["delta"]["text"] for e in events if e["delta"]["type"] == "text")
    calls = [e["delta"]["tool_call"] for e in events if e["delta"]["type"] == "tool_call"]
    message = whole["completion_message"]
    assert streamed_text == message["content"]
    assert calls == message["tool_calls"]
    assert events[-1]["stop_reason"] == message["stop_reason"]
    assert [e["event_type"] for e in events] == ["start"] + ["progress"] * (len(events) - 2) + ["complete"]


@settings(max_examples=150, deadline=None)
@given(arguments=st.dictionaries(_texts, _json_values, max_size=4), call_id=_texts.filter(bool))
def test_tool_call_round_trips_through_the_native_shape(arguments: dict[str, Any], call_id: str) -> None:
    """An upstream tool call, answered natively and sent back as the assistant message of the
    next turn, reaches the upstream unchanged."""
    raw = json.dumps(arguments)
    openai_call = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": raw}}
    native = openai_to_chat_response(
        completion_body({"role": "assistant", "content": "", "tool_calls": [openai_call]})
    )
    assistant = native["completion_message"]
    req = structure({"model_id": "m", "messages": [USER, assistant]}, ChatCompletionRequest)
    sent = chat_to_openai(req, "p")["messages"][1]
    assert sent["tool_calls"] == [openai_call]
    assert json.loads(sent["tool_calls"][0]["function"]["arguments"]) == arguments


_content_items = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _texts),
    st.builds(lambda u: {"type": "image", "image": {"url": {"uri": "https://x/" + u}}}, _texts),
)
_contents = st.one_of(_texts, _content_items, st.lists(_content_items, max_size=3))
_messages = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, _contents),
    st.builds(lambda c: {"role": "system", "content": c}, _contents),
    st.builds(lambda i, c: {"role": "tool", "call_id": i, "content": c}, _texts, _contents),
    st.builds(
        lambda c, s: {"role": "assistant", "content": c, "stop_reason": s},
        _contents,
        st.sampled_from(["end_of_turn", "end_of_message", "out_of_tokens"]),
    ),
)
_strategies = st.one_of(
    st.just({"type": "greedy"}),
    st.builds(
        lambda t, p: {"type": "top_p", "temperature": t, "top_p": p},
        st.floats(0.01, 2.0),
        st.floats(0.01, 1.0),
    ),
    st.builds(lambda k: {"type": "top_k", "top_k": k}, st.integers(1, 100)),
)


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(_messages, min_size=1, max_size=4),
    strategy=_strategies,
    max_tokens=st.integers(0, 4096),
    stream=st.booleans(),
)
def test_requests_round_trip_through_the_converter(
    messages: list[dict[str, Any]], strategy: dict[str, Any], max_tokens: int, stream: bool
) -> None:
    body = {
        "model_id": "m",
        "messages": messages,
        "sampling_params": {"strategy": strategy, "max_tokens": max_tokens},
        "stream": stream,
    }
    req = structure(body, ChatCompletionRequest)
    assert structure(converter.unstructure(req), ChatCompletionRequest) == req
    params = chat_to_openai(req, "p")
    assert [m["role"] for m in params["messages"]] == [m["role"] for m in messages]
    assert params.get("max_tokens") == (max_tokens or None)
    assert params.get("stream", False) is stream


# ---- the real llama-stack-client ----------------------------------------------------------

try:
    import llama_stack_client  # noqa: F401
except ImportError:  # 0.2.12 also needs `fire` and `requests`, which it does not declare
    HAVE_CLIENT = False
else:
    HAVE_CLIENT = True
needs_client = pytest.mark.skipif(
    not HAVE_CLIENT, reason="llama-stack-client==0.2.12 (+ fire, requests) not installed"
)


@needs_client
def test_client_types_accept_every_output() -> None:
    from llama_stack_client.types import (
        ChatCompletionResponseStreamChunk,
        CompletionResponse,
        EmbeddingsResponse,
    )
    from llama_stack_client.types.shared import ChatCompletionResponse

    message = {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "f", "arguments": '{"a": [1, "x"], "b": {"c": null}}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "broken"}},
        ],
    }
    parsed = ChatCompletionResponse.model_validate(
        openai_to_chat_response(completion_body(message, "tool_calls"))
    )
    assert parsed.completion_message.tool_calls[0].arguments == {"a": [1, "x"], "b": {"c": None}}
    assert parsed.completion_message.tool_calls[1].arguments == "broken"
    assert [m.metric for m in parsed.metrics or []] == ["prompt_tokens", "completion_tokens", "total_tokens"]

    chunks = [
        chunk({"content": "a"}),
        chunk(tool_delta(0, id="c", name="f", args="{}")),
        chunk(tool_delta(1, id="d", name="g", args="{")),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
    ]
    events = [ChatCompletionResponseStreamChunk.model_validate(e) for e in run_chat_stream(chunks)]
    assert [e.event.event_type for e in events] == ["start", "progress", "progress", "progress", "complete"]
    assert events[2].event.delta.type == "tool_call" and events[2].event.delta.parse_status == "succeeded"
    assert events[3].event.delta.parse_status == "failed"  # type: ignore[union-attr]

    CompletionResponse.model_validate(openai_to_completion_response(text_completion("x")))
    EmbeddingsResponse.model_validate({"embeddings": [[0.5, 1.0]]})


@needs_client
async def test_real_client_against_the_translation(aiohttp_server: Any) -> None:
    """What the 0.2.12 client sends is structured and translated, and what comes back it parses,
    through real HTTP (the routes themselves are tested elsewhere; this server is only a harness)."""
    from llama_stack_client import AsyncLlamaStackClient

    sent: list[dict[str, Any]] = []
    upstream_chunks = [
        chunk({"role": "assistant", "content": "Sun"}),
        chunk({"content": "ny"}),
        chunk(tool_delta(0, id="c1", name="get_weather", args='{"city":')),
        chunk(tool_delta(0, args=' "Paris"}')),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
    ]

    async def chat_route(request: web.Request) -> web.StreamResponse:
        try:
            req = structure(await request.json(), ChatCompletionRequest)
            params = chat_to_openai(req, "upstream-model")
        except BadRequest as exc:
            return web.json_response(exc.body(), status=400)
        sent.append(params)
        if not req.stream:
            return web.json_response(
                openai_to_chat_response(completion_body({"role": "assistant", "content": "Sunny"}))
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        translator = ChatStreamTranslator()
        for upstream in upstream_chunks:
            for ev in translator.feed(upstream):
                await response.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
        for ev in translator.finish():
            await response.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
        await response.write_eof()
        return response

    async def embeddings_route(request: web.Request) -> web.Response:
        req = structure(await request.json(), EmbeddingsRequest)
        sent.append(embeddings_to_openai(req, "upstream-embed"))
        data = [{"index": i, "embedding": [float(i), 0.5]} for i in reversed(range(len(req.contents)))]
        return web.json_response(openai_to_embeddings_response({"data": data}))

    async def completion_route(request: web.Request) -> web.Response:
        req = structure(await request.json(), CompletionRequest)
        sent.append(completion_to_openai(req, "upstream-model"))
        return web.json_response(openai_to_completion_response(text_completion(" there<|eot_id|>")))

    app = web.Application()
    app.router.add_post("/v1/inference/chat-completion", chat_route)
    app.router.add_post("/v1/inference/embeddings", embeddings_route)
    app.router.add_post("/v1/inference/completion", completion_route)
    server = await aiohttp_server(app)

    async with AsyncLlamaStackClient(base_url=str(server.make_url("")).rstrip("/"), max_retries=0) as client:
        tools = [
            {
                "tool_name": "get_weather",
                "description": "Weather",
                "parameters": {"city": {"param_type": "string", "description": "City", "required": True}},
            }
        ]
        messages = [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "image": {"url": {"uri": "https://x/sky.png"}}},
                ],
            },
        ]
        response = await client.inference.chat_completion(
            model_id="m",
            messages=messages,  # type: ignore[arg-type]
            sampling_params={
                "strategy": {"type": "top_p", "temperature": 0.5, "top_p": 0.9},
                "max_tokens": 20,
            },
            tools=tools,  # type: ignore[list-item]
            tool_config={"tool_choice": "auto"},
            logprobs={"top_k": 1},
        )
        assert response.completion_message.content == "Sunny"
        assert response.completion_message.stop_reason == "end_of_turn"
        assert sent[0] == {
            "model": "upstream-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": "https://x/sky.png"}},
                    ],
                },
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "max_tokens": 20,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string", "description": "City"}},
                            "required": ["city"],
                        },
                    },
                }
            ],
            "tool_choice": "auto",
            "logprobs": True,
            "top_logprobs": 1,
        }

        stream = await client.inference.chat_completion(
            model_id="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        events = [item.event async for item in stream]
        assert [e.event_type for e in events] == ["start", "progress", "progress", "progress", "complete"]
        assert "".join(e.delta.text for e in events if e.delta.type == "text") == "Sunny"  # type: ignore[union-attr]
        call = events[3].delta.tool_call  # type: ignore[union-attr]
        assert (call.call_id, call.tool_name, call.arguments) == ("c1", "get_weather", {"city": "Paris"})
        assert events[-1].stop_reason == "end_of_message"
        assert sent[1]["stream_options"] == {"include_usage": True}

        embeddings = await client.inference.embeddings(
            model_id="e", contents=["a", "b", "c"], output_dimension=2
        )
        assert embeddings.embeddings == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]]
        assert sent[2] == {"model": "upstream-embed", "input": ["a", "b", "c"], "dimensions": 2}

        completion = await client.inference.completion(
            model_id="m", content="Hello", sampling_params={"strategy": {"type": "greedy"}}
        )
        assert (completion.content, completion.stop_reason) == (" there", "end_of_turn")
        assert sent[3] == {"model": "upstream-model", "prompt": "Hello", "temperature": 0.0}

        from llama_stack_client import BadRequestError

        with pytest.raises(BadRequestError) as info:
            await client.inference.chat_completion(
                model_id="m", messages=[{"role": "user", "content": "x"}], tool_choice="required"
            )
        assert info.value.body["errors"] == [  # type: ignore[index]
            {"loc": "$.tool_choice", "msg": "tool_choice 'required' needs at least one tool in tools"}
        ]
