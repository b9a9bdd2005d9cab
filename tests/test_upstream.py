"""The transport failures every remote plugin shares, mapped by stackd.upstream."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from stackd.errors import UpstreamUnavailable
from stackd.upstream import make_session, upstream_errors


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a new connection is never completed (a black hole on 127.0.0.1)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    server.close()


async def test_a_connection_that_never_completes_is_503_not_504(unanswered_port: int) -> None:
    url = f"http://127.0.0.1:{unanswered_port}/v1/models"
    async with make_session(timeout=0.3) as session:
        expected = r"provider 'p': cannot connect to .* \(connection timed out\)"
        with pytest.raises(UpstreamUnavailable, match=expected), upstream_errors("p", url):
            async with session.get(url) as resp:
                await resp.read()
