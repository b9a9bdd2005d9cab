"""Every way Ollama can fail, and what the caller gets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stackd_provider_ollama.fake import FakeOllama

from stackd import CallContext
from stackd.errors import (
    UpstreamBadResponse,
    UpstreamClientError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

from .conftest import make_provider


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], **extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_refused_is_503_naming_provider_and_url(
    closed_port: int, ctx: CallContext, stream: bool
) -> None:
    prov = await make_provider({"url": f"http://127.0.0.1:{closed_port}"}, provider_id="gpu-ollama")
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await prov.openai_chat_completion(chat(stream=stream), ctx)
    finally:
        await prov.close()
    assert info.value.status == 503
    assert (
        f"provider 'gpu-ollama': cannot connect to http://127.0.0.1:{closed_port}/api/chat"
        in info.value.message
    )


async def test_slow_answer_is_504(fake: FakeOllama, ctx: CallContext) -> None:
    fake.delay = 1.0
    prov = await make_provider({"url": fake.url, "timeout": 0.2})
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await prov.openai_chat_completion(chat(), ctx)
    finally:
        await prov.close()
    assert info.value.status == 504
    assert "did not answer in time" in info.value.message


async def test_stall_mid_stream_is_504_from_the_iterator(fake: FakeOllama, ctx: CallContext) -> None:
    fake.chunk_delay = 1.0
    prov = await make_provider({"url": fake.url, "timeout": 0.2})
    try:
        stream = await prov.openai_chat_completion(chat(stream=True), ctx)
        got = []
        with pytest.raises(UpstreamTimeout):
            async for chunk in stream:
                got.append(chunk)
        await stream.aclose()
    finally:
        await prov.close()
    assert got[1]["choices"][0]["delta"] == {"content": "The"}


@pytest.mark.parametrize("stream", [False, True])
async def test_model_not_found_is_404_naming_ollama_pull(
    provider: Any, ctx: CallContext, stream: bool
) -> None:
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion(chat(model="phi4", stream=stream), ctx)
    assert info.value.status == 404
    assert info.value.message.startswith("provider 'ollama-test': model 'phi4' not found")
    assert "`ollama pull phi4`" in info.value.message


async def test_old_style_not_found_message_also_names_pull(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    fake.answer_once("/api/embed", 404, b'{"error":"model \\"nomic\\" not found, try pulling it first"}')
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_embeddings({"model": "nomic", "input": "x"}, ctx)
    assert 'model "nomic" not found, try pulling it first' in info.value.message
    assert "`ollama pull nomic`" in info.value.message


async def test_ollama_400_passes_status_and_message(provider: Any, ctx: CallContext) -> None:
    bad_image = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
            }
        ]
    )
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion(bad_image, ctx)
    assert info.value.status == 400
    assert info.value.message == "provider 'ollama-test': illegal base64 data at input byte 0"


async def test_embedding_model_asked_to_chat(provider: Any, ctx: CallContext) -> None:
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion(chat(model="all-minilm"), ctx)
    assert info.value.status == 400
    assert '"all-minilm" does not support completion' in info.value.message


async def test_ollama_500_with_error_json_is_502(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.answer_once("/api/chat", 500, b'{"error":"llama runner process has terminated: signal: killed"}')
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_chat_completion(chat(), ctx)
    assert info.value.status == 502
    assert "HTTP 500: llama runner process has terminated" in info.value.message


async def test_non_json_answers_are_502(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.answer_once("/api/chat", 200, b"<html>proxy login</html>", "text/html")
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_chat_completion(chat(), ctx)
    assert "body that is not JSON" in info.value.message
    fake.answer_once("/api/chat", 502, b"<html>Bad gateway</html>", "text/html")
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_chat_completion(chat(), ctx)
    assert "HTTP 502: <html>Bad gateway</html>" in info.value.message
    fake.answer_once("/api/embed", 200, b'{"model":"all-minilm"}')
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_embeddings({"model": "all-minilm", "input": "x"}, ctx)
    assert "without a list of embeddings" in info.value.message


async def test_ollama_queue_full_503(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.answer_once(
        "/api/generate", 503, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.openai_completion({"model": "llama3.2", "prompt": "x"}, ctx)
    assert "maximum pending requests exceeded" in info.value.message


async def drain(stream: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    try:
        async for chunk in stream:
            got.append(chunk)
    finally:
        await stream.aclose()
    return got


async def test_cut_stream_raises_from_the_iterator(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.cut_after = 3
    stream = await provider.openai_chat_completion(chat(stream=True), ctx)
    with pytest.raises(UpstreamBadResponse) as info:
        await drain(stream)
    assert "closed the connection mid-answer" in info.value.message


async def test_stream_ending_without_done_raises(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    fake.end_early_after = 2
    stream = await provider.openai_completion({"model": "llama3.2", "prompt": "x", "stream": True}, ctx)
    with pytest.raises(UpstreamBadResponse) as info:
        await drain(stream)
    assert "ended the stream before its final (done) object" in info.value.message


async def test_error_line_mid_stream_raises_its_message(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    fake.error_after = 2
    stream = await provider.openai_chat_completion(chat(stream=True), ctx)
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamBadResponse) as info:
        async for chunk in stream:
            got.append(chunk)
    await stream.aclose()
    assert info.value.message == (
        "provider 'ollama-test': Ollama failed mid-stream: an error was encountered while running the model"
    )
    assert [c["choices"][0]["delta"].get("content") for c in got] == ["", "The", " sky"]


async def test_client_going_away_closes_the_upstream_request(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    fake.reply = " ".join(["word"] * 200)
    fake.chunk_delay = 0.01
    stream = await provider.openai_chat_completion(chat(stream=True), ctx)
    async for chunk in stream:
        if chunk["choices"][0]["delta"].get("content"):
            break
    await stream.aclose()  # what the server does when its client disconnects
    await fake.wait_disconnect()
    assert fake.disconnects == 1


async def test_aclose_before_first_chunk_still_closes_upstream(
    provider: Any, fake: FakeOllama, ctx: CallContext
) -> None:
    fake.reply = " ".join(["word"] * 200)
    fake.chunk_delay = 0.01
    stream = await provider.openai_completion({"model": "llama3.2", "prompt": "go", "stream": True}, ctx)
    await stream.aclose()
    await fake.wait_disconnect()
    assert fake.disconnects == 1


async def test_streams_reuse_the_pooled_connection(provider: Any, fake: FakeOllama, ctx: CallContext) -> None:
    for _ in range(3):
        await drain(await provider.openai_chat_completion(chat(stream=True), ctx))
        await provider.openai_chat_completion(chat(), ctx)
    assert len(set(fake.peers)) == 1  # six calls, one keep-alive connection
    await asyncio.gather(*(provider.openai_chat_completion(chat(), ctx) for _ in range(5)))
    assert len(fake.bodies("/api/chat")) == 11


@pytest.mark.parametrize(("status", "stream"), [(401, False), (403, True)])
async def test_a_proxy_refusing_stackd_is_502_not_401(
    provider: Any, fake: FakeOllama, ctx: CallContext, status: int, stream: bool
) -> None:
    """Ollama behind an authenticating proxy that refuses stackd: the client's own token is not
    the one refused, so it gets 502 naming the provider's credentials, never the upstream's 401."""
    fake.answer_once("/api/chat", status, b'{"error": "invalid api key sk-abc"}')
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_chat_completion(chat(stream=stream), ctx)
    assert info.value.status == 502
    assert "the provider's credentials were refused" in info.value.message
    assert "sk-abc" not in info.value.message
