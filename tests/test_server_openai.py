"""The OpenAI routes through the real ``openai`` SDK, and the SSE wire as plain clients see it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

USER = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
async def server(serve_app: Any, echo_config: Path) -> TestServer:
    return await serve_app(echo_config)


@pytest.fixture(params=["/v1", "/v1/openai/v1"])
async def sdk(request: pytest.FixtureRequest, server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}{request.param}", api_key="unused",
                                max_retries=0, timeout=10)
    async with client:
        yield client


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
        yield session


async def test_chat_non_stream(sdk: openai.AsyncOpenAI) -> None:
    out = await sdk.chat.completions.create(model="echo-1", messages=USER)  # type: ignore[arg-type]
    assert out.object == "chat.completion"
    assert out.model == "echo-1"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "hello big world"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == 3


async def test_chat_max_tokens_and_model_with_slashes(sdk: openai.AsyncOpenAI) -> None:
    out = await sdk.chat.completions.create(model="meta-llama/Llama-3.2-3B", messages=USER,  # type: ignore[arg-type]
                                            max_tokens=2)
    assert out.model == "meta-llama/Llama-3.2-3B"
    assert out.choices[0].message.content == "hello big"
    assert out.choices[0].finish_reason == "length"


async def test_chat_stream(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(model="echo-1", messages=USER, stream=True)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello big world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.model == "echo-1" for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_chat_stream_include_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="echo-1", messages=USER, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.total_tokens == 6


async def test_completions(sdk: openai.AsyncOpenAI) -> None:
    out = await sdk.completions.create(model="echo-1", prompt="one two three")
    assert out.choices[0].text == "one two three"
    assert out.model == "echo-1"
    stream = await sdk.completions.create(model="echo-1", prompt="one two three", stream=True)
    parts = [c.choices[0].text async for c in stream]
    assert "".join(parts) == "one two three"


async def test_embeddings(sdk: openai.AsyncOpenAI) -> None:
    out = await sdk.embeddings.create(model="echo-embed", input=["a", "b"])
    assert out.model == "echo-embed"
    assert [d.index for d in out.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in out.data)
    assert out.data[0].embedding != out.data[1].embedding
    again = await sdk.embeddings.create(model="echo-embed", input="a", dimensions=4)
    assert again.data[0].embedding == out.data[0].embedding[:4]


async def test_embeddings_empty_input_is_400(sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    # Llama Stack 0.2.12's test_openai_embeddings_empty_list_error: an empty batch is an error.
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.embeddings.create(model="echo-embed", input=[])
    assert "empty" in str(info.value)
    async with http.post("/v1/openai/v1/embeddings", json={"model": "echo-embed", "input": []}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["errors"] == [{"loc": "$.input", "msg": "expected at least one input"}]


async def test_models_list(sdk: openai.AsyncOpenAI) -> None:
    ids = {m.id async for m in sdk.models.list()}
    assert ids == {"echo-1", "meta-llama/Llama-3.2-3B", "echo-embed"}
    model = await sdk.models.retrieve("meta-llama/Llama-3.2-3B")
    assert model.owned_by == "echo"


async def test_wrong_model_type_is_400(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="echo-embed", messages=USER)  # type: ignore[arg-type]
    assert "echo-embed" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        await sdk.embeddings.create(model="echo-1", input="x")
    with pytest.raises(openai.BadRequestError):
        await sdk.completions.create(model="echo-embed", prompt="x")


async def test_unknown_model_is_404(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    assert "no-such-model" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="no-such-model", messages=USER, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("no-such-model")


# ---- the raw SSE wire ----------------------------------------------------------------------------


def frames(raw: str) -> list[str]:
    """The data payloads of an SSE body, checking that it is made only of ``data: ...\\n\\n`` frames."""
    assert raw.endswith("\n\n"), raw[-200:]
    blocks = raw[:-2].split("\n\n")
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), raw
    return [b[len("data: "):] for b in blocks]


@pytest.mark.parametrize("prefix", ["/v1", "/v1/openai/v1"])
async def test_done_for_plain_clients_only(http: aiohttp.ClientSession, prefix: str) -> None:
    body = {"model": "echo-1", "messages": USER, "stream": True}
    async with http.post(f"{prefix}/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        plain = frames(await resp.text())
    assert plain[-1] == "[DONE]"
    assert plain.count("[DONE]") == 1
    assert json.loads(plain[-2])["choices"][0]["finish_reason"] == "stop"

    headers = {"X-LlamaStack-Client-Version": "0.2.12"}
    async with http.post(f"{prefix}/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        ls = frames(await resp.text())
    assert "[DONE]" not in ls
    assert json.loads(ls[-1])["choices"][0]["finish_reason"] == "stop"
    assert len(ls) == len(plain) - 1

    async with http.post(f"{prefix}/completions", json={"model": "echo-1", "prompt": "a b", "stream": True}) as resp:
        assert frames(await resp.text())[-1] == "[DONE]"


async def test_native_stream_never_sends_done(http: aiohttp.ClientSession) -> None:
    body = {"model_id": "echo-1", "messages": USER, "stream": True}
    async with http.post("/v1/inference/chat-completion", json=body) as resp:
        assert resp.status == 200, await resp.text()
        events = frames(await resp.text())
    assert "[DONE]" not in events
    kinds = [json.loads(e)["event"]["event_type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "complete"


async def test_error_before_stream_is_json_not_sse(http: aiohttp.ClientSession) -> None:
    body = {"model": "ghost", "messages": USER, "stream": True}
    async with http.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "ghost" in (await resp.json())["error"]["message"]


# ---- X-LlamaStack-Provider-Data is per request ----------------------------------------------------


async def _streamed_text(http: aiohttp.ClientSession, prompt: str, suffix: str | None) -> str:
    headers = {"X-LlamaStack-Provider-Data": json.dumps({"echo_suffix": suffix})} if suffix else {}
    body = {"model": "echo-1", "messages": [{"role": "user", "content": prompt}], "stream": True}
    async with http.post("/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        text = ""
        for payload in frames(await resp.text()):
            if payload != "[DONE]":
                for choice in json.loads(payload)["choices"]:
                    text += choice["delta"].get("content") or ""
        return text


async def test_provider_data_reaches_only_its_request(http: aiohttp.ClientSession) -> None:
    n = 60
    suffixes = [f"sfx{i}" if i % 3 else None for i in range(n)]
    texts = await asyncio.gather(*(_streamed_text(http, f"prompt {i} has words", s) for i, s in enumerate(suffixes)))
    for i, (suffix, text) in enumerate(zip(suffixes, texts, strict=True)):
        expected = f"prompt {i} has words" + (f" {suffix}" if suffix else "")
        assert text == expected
    # Nothing sticks to the provider after the requests.
    assert await _streamed_text(http, "clean", None) == "clean"


async def test_provider_data_through_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        out = await sdk.chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": f"n{i}"}],
            extra_headers={"X-LlamaStack-Provider-Data": json.dumps({"echo_suffix": f"s{i}"})})
        return out.choices[0].message.content or ""

    assert await asyncio.gather(*(one(i) for i in range(20))) == [f"n{i} s{i}" for i in range(20)]


async def test_bad_provider_data_header_is_400(http: aiohttp.ClientSession) -> None:
    for value in ("{not json", "[1]"):
        async with http.post("/v1/chat/completions", json={"model": "echo-1", "messages": USER},
                             headers={"X-LlamaStack-Provider-Data": value}) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["errors"][0]["loc"] == "$.headers.X-LlamaStack-Provider-Data"
            assert value not in json.dumps(body)  # the header may hold keys: not echoed
