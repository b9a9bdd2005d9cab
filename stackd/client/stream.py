"""Server-sent events in, typed chunks out: :class:`Stream`.

Bounded: a line longer than ``max_event_bytes``, or an event whose ``data`` lines add up to more,
fails the stream with :class:`InvalidResponse` instead of growing a buffer without end. A
stream ends at ``data: [DONE]`` (OpenAI routes) or at the end of the body (native routes); an
``{"error": ...}`` frame raises the exception of its type. Stopping early (``aclose()``, leaving
``async with``, or ``break`` inside ``async with``) closes the connection, so the server sees the
client go and cancels the upstream request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from stackd.client.errors import ConnectionFailed, InvalidResponse, error_for_frame

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "Stream", "sse_data"]

T = TypeVar("T")

DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
_DONE = "[DONE]"


async def sse_data(chunks: AsyncIterator[bytes], max_event_bytes: int) -> AsyncGenerator[str, None]:
    """The ``data`` of each event of an SSE byte stream (its ``data:`` lines joined by newlines).

    Comments, ``event:``, ``id:`` and ``retry:`` lines are read and dropped: stackd sends none
    and a client needs none of them.
    """
    buffer = bytearray()
    scanned = 0  # no newline before this offset of buffer: a long line is searched once
    data: list[bytes] = []
    size = 0
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while True:
            end = buffer.find(b"\n", max(start, scanned))
            if end < 0:
                scanned = len(buffer)
                if len(buffer) - start > max_event_bytes:
                    raise InvalidResponse(f"a server-sent event line is over {max_event_bytes} bytes "
                                          "(max_event_bytes); the stream was closed")
                break
            line = bytes(buffer[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield b"\n".join(data).decode("utf-8", "replace")
                    data, size = [], 0
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                size += len(value) + 1
                if size > max_event_bytes:
                    raise InvalidResponse(f"a server-sent event is over {max_event_bytes} bytes "
                                          "(max_event_bytes); the stream was closed")
                data.append(value)
        del buffer[:start]
        scanned -= start
    # The body ended inside an event (no blank line, maybe no newline): what was sent still counts.
    tail = bytes(buffer).rstrip(b"\r")
    if tail.startswith(b"data:"):
        data.append(tail[6:] if tail.startswith(b"data: ") else tail[5:])
    if data:
        yield b"\n".join(data).decode("utf-8", "replace")


class Stream(AsyncIterator[T]):
    """An async iterator of typed chunks over one streaming response.

    Use it as ``async with await client.openai_chat(..., stream=True) as stream: async for
    chunk in stream: ...``; or iterate it to the end (the connection is released then), or call
    :meth:`aclose` when done early.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, parse: Callable[[Any], T], *, max_event_bytes: int
    ) -> None:
        self.response = response
        self._parse = parse
        self._events = sse_data(response.content.iter_any(), max_event_bytes)
        self._finished = False

    @property
    def headers(self) -> Any:
        """The response headers (``X-Request-ID``, ``X-RateLimit-*``)."""
        return self.response.headers

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        try:
            data = await self._events.__anext__()
        except StopAsyncIteration:
            await self._finish(clean=True)
            raise
        except aiohttp.ClientError as exc:
            await self._finish(clean=False)
            raise ConnectionFailed(f"the stream broke before its end: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            await self._finish(clean=False)
            raise ConnectionFailed("the stream stalled: no data within the client's timeout") from None
        except BaseException:
            await self._finish(clean=False)
            raise
        if data == _DONE:
            await self._finish(clean=True)
            raise StopAsyncIteration
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self._finish(clean=False)
            raise InvalidResponse(f"a stream event is not JSON: {data[:80]!r}") from None
        if isinstance(body, dict) and "error" in body and len(body) == 1:
            await self._finish(clean=False)
            raise error_for_frame(body, self.response.headers)
        try:
            return self._parse(body)
        except BaseException:
            await self._finish(clean=False)
            raise

    async def _finish(self, *, clean: bool) -> None:
        if self._finished:
            return
        self._finished = True
        await self._events.aclose()
        if clean:
            self.response.release()
        else:
            # Closing (not releasing) drops the connection: the server sees the client go.
            self.response.close()

    async def aclose(self) -> None:
        """Stop reading; if the stream had not ended, close its connection."""
        await self._finish(clean=False)

    async def __aenter__(self) -> Stream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
