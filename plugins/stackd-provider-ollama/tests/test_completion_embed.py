"""/v1/completions through /api/generate and /v1/embeddings through /api/embed."""

from __future__ import annotations

import base64
from array import array
from typing import Any

import pytest
from stackd_provider_ollama.fake import FakeOllama

from stackd import CallContext
from stackd.errors import BadRequest

from .conftest import collect, make_provider


async def test_completion_maps_to_generate_raw(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    result = await provider.openai_completion(
        {
            "model": "llama3.2",
            "prompt": "Once upon a time",
            "max_tokens": 4,
            "temperature": 0,
            "stop": ["\n\n"],
        },
        ctx,
    )
    (body,) = fake.bodies("/api/generate")
    assert body == {
        "model": "llama3.2",
        "stream": False,
        "prompt": "Once upon a time",
        "raw": True,
        "options": {"temperature": 0, "num_predict": 4, "stop": ["\n\n"]},
    }
    assert result["id"].startswith("cmpl-") and result["object"] == "text_completion"
    assert result["model"] == "llama3.2"
    assert result["choices"] == [
        {"index": 0, "text": "The sky is blue", "finish_reason": "length", "logprobs": None}
    ]
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_completion_templated_when_configured_or_with_suffix(
    fake: FakeOllama, ctx: CallContext
) -> None:
    prov = await make_provider({"url": fake.url, "raw_completions": False})
    try:
        await prov.openai_completion({"model": "llama3.2", "prompt": ["hi"]}, ctx)
    finally:
        await prov.close()
    assert "raw" not in fake.bodies("/api/generate")[0]


async def test_suffix_turns_default_raw_off(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    result = await provider.openai_completion(
        {"model": "llama3.2", "prompt": "def f(", "suffix": "return x"}, ctx
    )
    body = fake.bodies("/api/generate")[0]
    assert body["suffix"] == "return x" and "raw" not in body
    assert result["choices"][0]["finish_reason"] == "stop"


async def test_completion_stream(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    stream = await provider.openai_completion(
        {"model": "llama3.2", "prompt": "Why?", "stream": True, "stream_options": {"include_usage": True}},
        ctx,
    )
    chunks = await collect(stream)
    assert all(c["object"] == "text_completion" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks[:-2]]
    assert "".join(texts) == fake.reply
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"prompt": ["a", "b"]}, "$.prompt"),
        ({"prompt": [1, 2, 3]}, "$.prompt"),
        ({"prompt": "x", "echo": True}, "$.echo"),
        ({"prompt": "x", "best_of": 3}, "$.best_of"),
        ({"prompt": "x", "n": 2}, "$.n"),
    ],
)
async def test_completion_unsupported(
    provider: Any, ctx: CallContext, params: dict[str, Any], loc: str
) -> None:
    with pytest.raises(BadRequest) as info:
        await provider.openai_completion({"model": "llama3.2", **params}, ctx)
    assert info.value.errors[0].loc == loc


async def test_embeddings_list_and_usage(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    result = await provider.openai_embeddings({"model": "all-minilm", "input": ["sky is blue", "grass"]}, ctx)
    assert fake.bodies("/api/embed")[0] == {"model": "all-minilm", "input": ["sky is blue", "grass"]}
    assert result["object"] == "list" and result["model"] == "all-minilm"
    assert [d["index"] for d in result["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in result["data"])
    assert result["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_embeddings_string_dimensions_and_base64(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    floats = await provider.openai_embeddings({"model": "all-minilm", "input": "hi", "dimensions": 4}, ctx)
    packed = await provider.openai_embeddings(
        {"model": "all-minilm", "input": "hi", "dimensions": 4, "encoding_format": "base64"}, ctx
    )
    assert fake.bodies("/api/embed")[0]["dimensions"] == 4
    vector = floats["data"][0]["embedding"]
    decoded = array("f", base64.b64decode(packed["data"][0]["embedding"]))
    assert len(decoded) == 4
    assert list(decoded) == pytest.approx(vector, rel=1e-6)


async def test_embeddings_reject_token_input(provider: Any, ctx: CallContext) -> None:
    with pytest.raises(BadRequest) as info:
        await provider.openai_embeddings({"model": "all-minilm", "input": [[1, 2]]}, ctx)
    assert info.value.errors[0].loc == "$.input[0]"
