"""Clients that hang up mid-stream are routine (found by ``bench/soak.py``): they must cost no
error log and no traceback (``bench/soak.py`` checks that they cost no connection).

Before the fix, a reset that reached the server while it was writing an event made
``stream_sse`` re-raise ``ClientConnectionResetError``; aiohttp then logged "Error handling
request" at ERROR with a full traceback, for about 4 in 10 such clients under load.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from stackd.loading import LoadedConfig
from stackd.testing.fake_openai import FakeOpenAI

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

__all__: list[str] = []

_CLIENTS = 100


@pytest.fixture
async def server(vllm_config: Callable[..., LoadedConfig],
                 live_app: Callable[[LoadedConfig], Awaitable[int]]) -> AsyncIterator[tuple[int, FakeOpenAI]]:
    # Long streams with no pause: the server is writing whenever the client's reset arrives.
    async with FakeOpenAI(models=["fake-model"], chunks=3000) as fake:
        yield await live_app(vllm_config(fake.url)), fake


async def _hang_up_mid_stream(port: int, path: str, body: dict[str, object]) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        data = orjson.dumps(body)
        await loop.sock_sendall(sock, (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
        got = b""
        while b"data: " not in got:
            piece = await loop.sock_recv(sock, 65536)
            assert piece, f"the server closed the stream before its first event: {got!r}"
            got += piece
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
    finally:
        # SO_LINGER 0: close() sends a reset, as a killed client or a proxy timing out does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/v1/inference/chat-completion",
     {"model_id": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
])
async def test_clients_that_hang_up_mid_stream_log_no_error(
    server: tuple[int, FakeOpenAI], path: str, body: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    caplog.set_level(logging.INFO)
    for _ in range(_CLIENTS):
        await _hang_up_mid_stream(port, path, body)
    await asyncio.sleep(0.2)  # the last handlers see their client's reset
    # A client going away is not a server error.
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []


async def test_clients_that_hang_up_mid_upload_log_no_error(
    server: tuple[int, FakeOpenAI], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    for _ in range(20):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # A body announced at 10,000 bytes, of which 20 arrive before the client is gone.
        await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
                                      b'{"model": "chat", "m')
        await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await asyncio.sleep(0.2)
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []
