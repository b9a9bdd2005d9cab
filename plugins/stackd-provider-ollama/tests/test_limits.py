"""What Ollama sends is bounded while it is read: body and line sizes from the limits the core
hands the factory (``deps["__upstream_limits__"]``), and the provider's deadlines
(``total_timeout``, ``stream_first_byte_timeout``, ``stream_idle_timeout``) against an Ollama
that drips bytes. The upstream is a small aiohttp app on 127.0.0.1 playing each attack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from stackd import CallContext
from stackd.convert import structure
from stackd.errors import UpstreamBadResponse, UpstreamTimeout
from stackd.upstream import UpstreamLimits

from .conftest import collect, load_spec

LIMITS = UpstreamLimits(max_body_bytes=64 * 1024, max_line_bytes=16 * 1024)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
Play = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def line(**obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


@pytest.fixture
async def ollama() -> AsyncIterator[Callable[[Play], Awaitable[str]]]:
    """``url = await ollama(play)``: an Ollama whose /api/chat answers 200 and then runs ``play``."""
    runners: list[web.AppRunner] = []

    async def start(play: Play) -> str:
        async def chat(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            await play(request, resp)
            return resp

        app = web.Application()
        app.router.add_post("/api/chat", chat)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def provider(url: str, **config: Any) -> Any:
    spec = load_spec()
    cfg = structure({"url": url, "timeout": 5, **config}, spec.config_class, "$.config", what="config")
    return await spec.factory(cfg, {"__provider_id__": "ol", "__upstream_limits__": LIMITS})


async def drip(resp: web.StreamResponse, data: bytes, every: float = 0.05) -> None:
    for i in range(len(data)):
        await resp.write(data[i : i + 1])
        await asyncio.sleep(every)


async def test_an_answer_over_the_body_limit_is_502(ollama: Callable[[Play], Awaitable[str]]) -> None:
    async def play(_: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(b'{"message": {"role": "assistant", "content": "')
        for _ in range(1024):
            await resp.write(b"x" * 65536)

    prov = await provider(await ollama(play))
    try:
        expected = r"over the limit of 65536 bytes; raise server\.max_upstream_body_bytes"
        with pytest.raises(UpstreamBadResponse, match=expected):
            await prov.openai_chat_completion(CHAT, CallContext())
    finally:
        await prov.close()


async def test_a_stream_line_over_the_limit_is_502(ollama: Callable[[Play], Awaitable[str]]) -> None:
    async def play(_: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(line(message={"role": "assistant", "content": "a"}, done=False))
        await resp.write(b'{"message": {"content": "')
        for _ in range(1024):
            await resp.write(b"x" * 65536)

    prov = await provider(await ollama(play))
    try:
        stream = await prov.openai_chat_completion({**CHAT, "stream": True}, CallContext())
        with pytest.raises(UpstreamBadResponse, match="stream line over the limit of 16384 bytes"):
            await collect(stream)
    finally:
        await prov.close()


async def test_a_dripping_answer_meets_total_timeout(ollama: Callable[[Play], Awaitable[str]]) -> None:
    async def play(_: web.Request, resp: web.StreamResponse) -> None:
        await drip(resp, line(message={"role": "assistant", "content": "slow " * 50}, done=True))

    prov = await provider(await ollama(play), total_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            await prov.openai_chat_completion(CHAT, CallContext())
    finally:
        await prov.close()
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(("before", "setting"), [(0, "stream_first_byte_timeout"), (2, "stream_idle_timeout")])
async def test_a_dripping_stream_meets_its_timeouts(
    ollama: Callable[[Play], Awaitable[str]], before: int, setting: str
) -> None:
    async def play(_: web.Request, resp: web.StreamResponse) -> None:
        for _ in range(before):
            await resp.write(line(message={"role": "assistant", "content": "a"}, done=False))
        await drip(resp, line(message={"role": "assistant", "content": "b" * 100}, done=True))

    prov = await provider(await ollama(play), stream_first_byte_timeout=0.5, stream_idle_timeout=0.5)
    started = time.monotonic()
    got: list[dict[str, Any]] = []
    try:
        stream = await prov.openai_chat_completion({**CHAT, "stream": True}, CallContext())
        with pytest.raises(UpstreamTimeout, match=setting):
            async for chunk in stream:
                got.append(chunk)
    finally:
        await prov.close()
    assert len(got) == 1 + before  # the role chunk, then one per object that came whole
    assert time.monotonic() - started < 5.0
