"""The router's stream read as any consumer reads it (not through the SSE writer, which steps
its provider's stream itself), and the core reader that owns an upstream response
(:func:`stackd.upstream.open_sse`): what each does at the end, at an early close and on errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from stackd.errors import StackdError, UpstreamBadResponse
from stackd.relabel import Relabelled
from stackd.testing.fake_openai import FakeOpenAI
from stackd.upstream import SSEEvent, open_sse

__all__: list[str] = []


def _chunk(i: int, text: str, *, finish: str | None = None) -> SSEEvent:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "up-model",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return SSEEvent(data, orjson.dumps(data))


class _Source:
    """A provider's stream: yields ``chunks`` then ends, or fails with ``fail`` after them."""

    def __init__(self, chunks: list[dict[str, Any]], fail: BaseException | None = None) -> None:
        self.closed = False
        self._gen = self._run(chunks, fail)

    async def _run(self, chunks: list[dict[str, Any]], fail: BaseException | None) -> AsyncIterator[dict[str, Any]]:
        try:
            for chunk in chunks:
                yield chunk
            if fail is not None:
                raise fail
        finally:
            self.closed = True

    def __aiter__(self) -> _Source:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()


async def test_read_to_its_end_every_chunk_is_relabelled_and_the_completion_kept_once() -> None:
    source = _Source([_chunk(0, "Hel"), _chunk(1, "lo", finish="stop")])
    kept: list[tuple[dict[str, Any], int]] = []
    stream = Relabelled(source, "client-model", lambda body, weight: kept.append((body, weight)), 1 << 20)
    got = [chunk async for chunk in stream]
    assert [c["model"] for c in got] == ["client-model", "client-model"]
    # The bytes forwarded say what the dict says.
    assert [orjson.loads(c.raw) for c in got] == [dict(c) for c in got]  # type: ignore[attr-defined]
    assert source.closed
    assert len(kept) == 1
    body, weight = kept[0]
    assert body["model"] == "client-model" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert weight > 0
    await stream.aclose()  # closing after the end changes nothing
    assert len(kept) == 1


async def test_closed_early_the_source_is_closed_and_nothing_is_kept() -> None:
    source = _Source([_chunk(0, "a"), _chunk(1, "b"), _chunk(2, "c")])
    kept: list[Any] = []
    stream = Relabelled(source, "m", lambda body, weight: kept.append(body), 1 << 20)
    async for _ in stream:
        break
    await stream.aclose()
    assert source.closed and kept == []
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_a_failing_source_is_closed_its_error_passes_and_nothing_is_kept() -> None:
    cut = UpstreamBadResponse("provider 'p': the stream ended before it was complete")
    source = _Source([_chunk(0, "a")], fail=cut)
    kept: list[Any] = []
    stream = Relabelled(source, "m", lambda body, weight: kept.append(body), 1 << 20)
    got = []
    with pytest.raises(StackdError, match="ended before it was complete"):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 1 and source.closed and kept == []


async def test_over_the_budget_the_stream_goes_on_unkept_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    source = _Source([_chunk(i, "x" * 100) for i in range(10)])
    kept: list[Any] = []
    stream = Relabelled(source, "m", lambda body, weight: kept.append(body), 500)
    with caplog.at_level(logging.WARNING, logger="stackd.routing"):
        got = [chunk async for chunk in stream]
    assert len(got) == 10 and kept == []
    assert [r.getMessage() for r in caplog.records if "max_stored_completion_bytes" in r.getMessage()] != []
    assert len(caplog.records) == 1


async def test_without_a_store_nothing_is_assembled() -> None:
    source = _Source([_chunk(0, "a")])
    stream = Relabelled(source, "m", None, 1 << 20)
    assert [c["model"] async for c in stream] == ["m"]
    assert source.closed


# -- open_sse: the provider's stream that owns its response ---------------------------------


async def _post_stream(session: aiohttp.ClientSession, fake: FakeOpenAI) -> aiohttp.ClientResponse:
    return await session.post(f"{fake.url}/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True})


async def test_open_sse_read_to_the_end_gives_the_connection_back_to_the_pool() -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=5) as fake, aiohttp.ClientSession() as session:
        resp = await _post_stream(session, fake)
        events = await open_sse(resp, "p", "http://upstream/v1/chat/completions")
        got = [e async for e in events]
        assert len(got) >= 5 and all(isinstance(e, SSEEvent) for e in got)
        assert resp.closed and resp.connection is None
        connector = session.connector
        assert connector is not None
        # Released, not closed: the next request reuses the pooled connection.
        assert sum(len(c) for c in connector._conns.values()) == 1
        assert fake.disconnects == 0


async def test_open_sse_closed_before_any_event_drops_the_connection() -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=10_000, chunk_delay=0.01) as fake, \
            aiohttp.ClientSession() as session:
        resp = await _post_stream(session, fake)
        events = await open_sse(resp, "p", "http://upstream/v1/chat/completions")
        await events.aclose()  # never read: the primer put it inside the try that owns resp
        assert resp.closed
        connector = session.connector
        assert connector is not None
        assert sum(len(c) for c in connector._conns.values()) == 0
        # The upstream sees the client go, so it stops generating.
        await asyncio.wait_for(fake.disconnected.wait(), 30)


async def test_open_sse_a_cut_connection_is_a_stackd_error_naming_the_url() -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=10_000, chunk_delay=0.01) as fake, \
            aiohttp.ClientSession() as session:
        resp = await _post_stream(session, fake)
        events = await open_sse(resp, "p", "http://upstream/v1/chat/completions")
        await events.__anext__()
        assert resp.connection is not None
        resp.connection.transport.abort()  # type: ignore[union-attr]
        with pytest.raises(StackdError) as caught:
            async for _ in events:
                pass
        assert "http://upstream/v1/chat/completions" in caught.value.message
        assert resp.closed
