"""What an upstream may send, bounded while it is read (stackd.upstream): the body size, a stream
line, a whole exchange that drips bytes, a stream's first event and the gap between events.

Every attack runs against a real HTTP server on 127.0.0.1 (FakeOpenAI, or a small aiohttp app
for shapes the fake does not play), read by the helpers every remote plugin uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from stackd.errors import StackdError, UpstreamBadResponse, UpstreamTimeout
from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.upstream import (
    UpstreamLimits,
    check_status,
    iter_ndjson,
    iter_sse,
    make_session,
    read_json,
    stream_timeout,
    upstream_errors,
)

SMALL = UpstreamLimits(max_body_bytes=64 * 1024, max_line_bytes=16 * 1024)
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model",), chunks=8) as server:
        yield server


async def post_json(fake: FakeOpenAI, limits: UpstreamLimits = SMALL, **session: Any) -> Any:
    url = fake.url + "/v1/chat/completions"
    async with make_session(**session) as s:
        with upstream_errors("p", url):
            async with s.post(url, json=CHAT) as resp:
                return await read_json(resp, "p", limits)


async def sse_events(fake: FakeOpenAI, limits: UpstreamLimits = SMALL, *,
                     first: float | None = None, idle: float | None = None) -> list[dict[str, Any]]:
    url = fake.url + "/v1/chat/completions"
    loop = asyncio.get_running_loop()
    async with make_session(timeout=5.0) as s:
        with upstream_errors("p", url):
            async with s.post(url, json={**CHAT, "stream": True}, timeout=stream_timeout(5.0)) as resp:
                by = loop.time() + first if first is not None else None
                return [e async for e in iter_sse(resp, "p", limits, first_event_by=by, idle_timeout=idle)]


# ---- body size -----------------------------------------------------------------------------------


@pytest.mark.parametrize("announce_length", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_body_limit_is_502_before_it_is_read_whole(
    fake: FakeOpenAI, announce_length: bool
) -> None:
    # 64 MiB offered against a 64 KiB limit: refused on the header, or after about the limit.
    fake.fault = Fault(huge=64 * 1024 * 1024, announce_length=announce_length)
    started = time.monotonic()
    expected = r"over the limit of 65536 bytes; raise server\.max_upstream_body_bytes"
    with pytest.raises(UpstreamBadResponse, match=expected):
        await post_json(fake)
    assert time.monotonic() - started < 5.0
    await asyncio.wait_for(fake.disconnected.wait(), 5.0)  # the connection was dropped, not drained


async def test_an_answer_at_the_limit_is_read(fake: FakeOpenAI) -> None:
    fake.fault = Fault(huge=SMALL.max_body_bytes, announce_length=False)
    answer = await post_json(fake)
    assert len(answer["choices"][0]["message"]["content"]) > 60_000


async def test_a_huge_error_body_is_not_read_whole() -> None:
    # An upstream 400 carries a message; one that sends 64 MiB of it gets its first 64 KiB read.
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=400, headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for _ in range(1024):
            await resp.write(b"e" * 65536)
        return resp

    app.router.add_post("/x", handler)
    async with serve(app) as url, make_session() as s, s.post(url + "/x") as resp:
        with pytest.raises(StackdError) as info:
            await check_status(resp, "p")
    assert info.value.status == 400
    assert len(info.value.message) < 1000


# ---- stream lines --------------------------------------------------------------------------------


async def test_an_sse_line_over_the_limit_is_502(fake: FakeOpenAI) -> None:
    fake.fault = Fault(huge=8 * 1024 * 1024)  # one 8 MiB event against a 16 KiB line limit
    started = time.monotonic()
    with pytest.raises(UpstreamBadResponse, match=r"a stream line over the limit of 16384 bytes"):
        await sse_events(fake)
    assert time.monotonic() - started < 5.0


async def test_a_line_split_over_many_reads_counts_whole() -> None:
    # The line arrives in small pieces: each under the limit, together over it.
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [], "x": "')
        for _ in range(64):
            await resp.write(b"y" * 1024)
            await asyncio.sleep(0.001)
        await resp.write(b'"}\n\ndata: [DONE]\n\n')
        return resp

    app.router.add_post("/s", handler)
    async with serve(app) as url, make_session() as s, s.post(url + "/s") as resp:
        with pytest.raises(UpstreamBadResponse, match="stream line over the limit"):
            [e async for e in iter_sse(resp, "p", UpstreamLimits(max_line_bytes=16 * 1024))]
    # ... and the same line under a larger limit is one event.
    async with serve(app) as url, make_session() as s, s.post(url + "/s") as resp:
        events = [e async for e in iter_sse(resp, "p", UpstreamLimits(max_line_bytes=128 * 1024))]
    assert len(events) == 1 and len(events[0]["x"]) == 64 * 1024


async def test_an_ndjson_line_over_the_limit_is_502() -> None:
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"response": "a", "done": false}\n{"response": "')
        for _ in range(1024):
            await resp.write(b"z" * 65536)
        return resp

    app.router.add_post("/n", handler)
    async with serve(app) as url, make_session() as s, s.post(url + "/n") as resp:
        seen = []
        with pytest.raises(UpstreamBadResponse, match="stream line over the limit of 16384 bytes"):
            async for obj in iter_ndjson(resp, "p", SMALL):
                seen.append(obj)
    assert seen == [{"response": "a", "done": False}]


# ---- deadlines -----------------------------------------------------------------------------------


async def test_a_dripping_answer_meets_the_total_timeout(fake: FakeOpenAI) -> None:
    # A byte every 50 ms: each read is quick, so only the total deadline can end it.
    fake.fault = Fault(drip=0.05)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await post_json(fake, timeout=5.0, total_timeout=0.6)
    assert time.monotonic() - started < 5.0


async def test_a_stream_dripping_before_its_first_event_meets_the_first_byte_timeout(fake: FakeOpenAI) -> None:
    fake.fault = Fault(drip=0.05, drip_after=0)
    started = time.monotonic()
    expected = r"did not send its first stream event in time \(stream_first_byte_timeout\)"
    with pytest.raises(UpstreamTimeout, match=expected):
        await sse_events(fake, first=0.6, idle=30)
    assert time.monotonic() - started < 5.0


async def test_a_stall_after_the_first_event_meets_the_idle_timeout_not_the_first_event_bound(
    fake: FakeOpenAI,
) -> None:
    """The first event's timer (60 s here, stream_first_byte_timeout) must not hold the idle bound
    (0.3 s) back once an event came: the stall is cut at the idle bound."""
    fake.chunk_delay = 30
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"sent no stream event for 0\.3 s \(stream_idle_timeout\)"):
        await sse_events(fake, first=60, idle=0.3)
    assert time.monotonic() - started < 5.0


async def test_a_stream_dripping_between_events_meets_the_idle_timeout(fake: FakeOpenAI) -> None:
    fake.fault = Fault(drip=0.05, drip_after=3)
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"sent no stream event for 0\.5 s \(stream_idle_timeout\)"):
        url = fake.url + "/v1/chat/completions"
        async with make_session(timeout=5.0) as s, s.post(url, json={**CHAT, "stream": True}) as resp:
            async for event in iter_sse(resp, "p", SMALL, idle_timeout=0.5):
                seen.append(event)
    assert len(seen) == 3
    assert time.monotonic() - started < 5.0


async def test_a_slow_consumer_is_not_an_idle_upstream(fake: FakeOpenAI) -> None:
    # The client holds each event longer than the idle timeout: the upstream is not to blame.
    fake.chunks = 3
    url = fake.url + "/v1/chat/completions"
    events = []
    async with make_session(timeout=5.0) as s, s.post(url, json={**CHAT, "stream": True}) as resp:
        async for event in iter_sse(resp, "p", SMALL, idle_timeout=0.2):
            events.append(event)
            await asyncio.sleep(0.35)
    assert len(events) == 5


async def test_a_steady_stream_outlives_its_idle_timeout(fake: FakeOpenAI) -> None:
    fake.chunks, fake.chunk_delay = 12, 0.05  # 0.6 s in all, never 0.3 s quiet
    events = await sse_events(fake, first=0.3, idle=0.3)
    assert len(events) == 14


# ---- helpers -------------------------------------------------------------------------------------


class serve:
    """An aiohttp app on 127.0.0.1:0 for the length of an ``async with``; yields its URL."""

    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()



@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_compressed_bomb_is_bounded_by_what_it_inflates_to(stream: bool) -> None:
    # 64 MiB of one byte, gzipped to ~64 KB: small on the wire, so only the inflated size can tell.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"0" * (1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()
    kind = "text/event-stream" if stream else "application/json"
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Type": kind, "Content-Encoding": "gzip"})

    app.router.add_post("/b", handler)
    started = time.monotonic()
    async with serve(app) as url, make_session() as s, s.post(url + "/b") as resp:
        limits = UpstreamLimits(max_body_bytes=4 * 1024 * 1024, max_line_bytes=1024 * 1024)
        with pytest.raises(UpstreamBadResponse, match="over the limit"):
            if stream:
                [e async for e in iter_sse(resp, "p", limits)]
            else:
                await read_json(resp, "p", limits)
    assert time.monotonic() - started < 5.0


async def test_the_limit_message_names_no_credentials_of_the_url(fake: FakeOpenAI) -> None:
    fake.fault = Fault(huge=1024 * 1024)
    url = fake.url.replace("http://", "http://user:hunter2@") + "/v1/chat/completions?key=sk-secret"
    async with make_session() as s, s.post(url, json=CHAT) as resp:
        with pytest.raises(UpstreamBadResponse) as info:
            await read_json(resp, "p", SMALL)
    assert "hunter2" not in info.value.message and "sk-secret" not in info.value.message
    assert "/v1/chat/completions" in info.value.message


async def test_keep_alive_comments_are_not_events() -> None:
    # An upstream that only ever says ": keep-alive" is idle, however chatty.
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": []}\n\n')
        for _ in range(200):
            await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(0.02)
        return resp

    app.router.add_post("/k", handler)
    started = time.monotonic()
    async with serve(app) as url, make_session() as s, s.post(url + "/k") as resp:
        seen = []
        with pytest.raises(UpstreamTimeout, match="stream_idle_timeout"):
            async for event in iter_sse(resp, "p", SMALL, idle_timeout=0.4):
                seen.append(event)
    assert seen == [{"choices": []}]
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * (1024 * 1024) + b"\r\n\r\n",  # a 1 MiB header
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: h\r\n" * 100_000 + b"\r\n",  # a hundred thousand headers
        b"HTTP/9.9 abc nonsense\r\n\r\n",  # not HTTP
    ],
    ids=["huge-header", "many-headers", "bad-status-line"],
)
async def test_a_hostile_response_head_is_502(head: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        async with make_session(timeout=5.0) as s:
            with pytest.raises(UpstreamBadResponse), upstream_errors("p", url):
                async with s.post(url, json=CHAT) as resp:
                    await read_json(resp, "p", SMALL)
    finally:
        server.close()
        await server.wait_closed()
