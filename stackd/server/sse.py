"""Server-sent events: frames written as the provider yields them, no added delay.

Llama Stack routes never send ``data: [DONE]`` (the 0.2.x client fails on it); OpenAI routes
end with it unless the caller is a Llama Stack client. An error after the stream began is one
last ``data: {"error": ...}`` frame. A client that goes away cancels the handler task, which
closes the provider's iterator, which closes the upstream request.

Frames that are ready together leave together: when the upstream delivered several events in
one read, they are written as one chunk, not one socket write (and HTTP chunk) each. An
event that has to be waited for flushes what is ready first, so no frame is ever held back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import orjson
from aiohttp import web

from stackd.apis.inference import close_stream
from stackd.errors import StackdError
from stackd.relabel import Relabelled
from stackd.server.keys import STALL_TIMEOUT, STREAMS
from stackd.upstream import SSEEvent, SSEStream

__all__ = ["encode_event", "stream_sse"]

log = logging.getLogger("stackd.server")

_DONE = b"data: [DONE]\n\n"


def encode_event(event: Any) -> bytes:
    """An event's JSON: the upstream's own bytes when they still say what the event says
    (:class:`stackd.upstream.SSEEvent`), else the event serialised."""
    if event.__class__ is SSEEvent:
        raw: bytes | None = event.raw
        if raw is not None:
            return raw
    return orjson.dumps(event)


async def stream_sse(
    request: web.Request,
    events: AsyncIterator[Any],
    *,
    done: bool,
    headers: dict[str, str] | None = None,
    encode: Callable[[Any], bytes] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **(headers or {}),
    })
    await response.prepare(request)
    write = _stall_guard(response.write, request.transport, request.app[STALL_TIMEOUT])
    live = request.app[STREAMS]
    task = asyncio.current_task()
    assert task is not None
    live.tasks.add(task)
    try:
        await _stream(request, events, encode or encode_event, write, done)
        await response.write_eof()
    except ConnectionError as exc:
        # The client is gone: it hung up (its reset or close can reach us while we write, before
        # aiohttp cancels this handler) or it stalled. That is the client's doing, not a server
        # error: returning the response lets aiohttp's finish_response end the connection
        # quietly, where raising would make aiohttp log a 500 with a traceback per such client.
        log.debug("stream on %s ended early: the client went away (%s)", request.path, exc)
    except asyncio.CancelledError:
        # A shutdown past server.shutdown_grace ends the stream (LiveStreams.end_all): the
        # provider's iterator is closed already; the client is told why, and the chunked body
        # ends properly, so it knows the answer is incomplete rather than cut by the network.
        if not live.ended_by_shutdown(task) or task.cancelling() > 1:
            raise
        task.uncancel()
        await _last_frame(response, _SHUTDOWN)
    finally:
        live.tasks.discard(task)
    return response


_SHUTDOWN = (b'data: {"error": {"message": "the server is shutting down; the stream was ended early, '
             b'retry the request", "type": "service_unavailable"}}\n\n')
# A client that does not read cannot hold the shutdown: its last frame gets this long.
_LAST_FRAME_TIMEOUT = 0.5


async def _last_frame(response: web.StreamResponse, frame: bytes) -> None:
    try:
        async with asyncio.timeout(_LAST_FRAME_TIMEOUT):
            await response.write(frame)
            await response.write_eof()
    except (ConnectionError, TimeoutError):
        pass  # the connection is cut right after this anyway


async def _stream(
    request: web.Request,
    events: AsyncIterator[Any],
    encode: Callable[[Any], bytes],
    write: Callable[[bytes], Awaitable[None]],
    done: bool,
) -> None:
    """Every event, then ``[DONE]`` or an error frame; the provider's iterator is closed in any case."""
    try:
        await _pump(events, encode, write)
    except StackdError as exc:
        log.warning("stream on %s failed: %s", request.path, exc.message)
        await write(b"data: " + orjson.dumps({"error": {"message": exc.message, "type": exc.type}}) + b"\n\n")
    except ClientStalled as exc:
        # The connection is aborted already; nothing more can be sent.
        log.warning("stream on %s abandoned: %s (server.stream_stall_timeout)", request.path, exc)
        raise
    except ConnectionError:
        raise
    except Exception:
        log.exception("stream on %s failed", request.path)
        await write(b'data: {"error": {"message": "internal server error", "type": "internal_error"}}\n\n')
    else:
        if done:
            await write(_DONE)
    finally:
        await close_stream(events)


class ClientStalled(ConnectionError):
    """The client stopped reading a stream for longer than server.stream_stall_timeout."""


def _stall_guard(
    write: Callable[[bytes], Awaitable[None]], transport: asyncio.Transport | None, timeout: float
) -> Callable[[bytes], Awaitable[None]]:
    """``write``, except that waiting on a client that stopped reading ends after ``timeout``.

    A stalled client would otherwise hold its upstream request (and the model's time) open
    for ever. The check costs one call per write; only a backlogged write gets a timer.
    """
    if transport is None:
        return write
    # A write waits for the client only when it leaves the transport over its high-water mark.
    high = transport.get_write_buffer_limits()[1]

    async def guarded(data: bytes) -> None:
        if transport.get_write_buffer_size() + len(data) <= high:
            await write(data)
            return
        try:
            await asyncio.wait_for(write(data), timeout)
        except TimeoutError:
            transport.abort()
            raise ClientStalled(f"the client read nothing for {timeout:g} s") from None

    return guarded


async def _pump(events: AsyncIterator[Any], encode: Callable[[Any], bytes], write: Callable[[bytes], Any]) -> None:
    """Write every event; frames that were ready without waiting go out in one write.

    A router's :class:`Relabelled` stream is read through: its provider's stream is stepped
    here and each event passed to ``take``, which spares every event one generator layer.
    """
    relabelled = events if isinstance(events, Relabelled) else None
    take: Callable[[Any], Any] | None = None
    if relabelled is not None:
        if relabelled.source.__class__ is SSEStream:
            await _pump_reads(relabelled, write)
            return
        take, events = relabelled.take, relabelled.source
    ready: list[bytes] = []
    anext = events.__anext__
    while True:
        # Start the next step by hand: if it completes at once, the event was already buffered.
        step = anext().__await__()
        try:
            future = step.send(None)
        except StopIteration as got:
            event = got.value
            if take is not None:
                try:
                    event = take(event)
                except Exception:
                    if ready:
                        await write(b"".join(ready))
                    raise
            ready.append(b"data: " + encode(event) + b"\n\n")
            continue
        except StopAsyncIteration:
            break
        except Exception:
            if ready:
                await write(b"".join(ready))  # what came before the failure still goes out
            raise
        # The step waits for the upstream: send what is ready, then wait with it.
        if ready:
            try:
                await write(b"".join(ready))
            except BaseException as exc:
                await _abandon(step, exc)
                raise
            ready.clear()
        try:
            event = await _Resumed(step, future)
        except StopAsyncIteration:
            break
        # ready is empty here: it was written before the wait.
        ready.append(b"data: " + encode(event if take is None else take(event)) + b"\n\n")
    if relabelled is not None:
        await relabelled.ended()  # stored (and its provider's stream closed) before the last write
    if ready:
        await write(b"".join(ready))


async def _pump_reads(relabelled: Relabelled, write: Callable[[bytes], Any]) -> None:
    """An upstream's SSE stream under the router: one write per upstream read, whatever the
    number of events in it (each event's own bytes, relabelled, when they can be)."""
    next_read = relabelled.source.next_read  # type: ignore[attr-defined]
    frames = relabelled.frames
    while True:
        try:
            payloads, events, upstream = await next_read()
        except StopAsyncIteration:
            break
        data = frames(payloads, events, upstream)
        if data:
            await write(data)
    await relabelled.ended()  # stored (and its provider's stream closed) before [DONE]


class _Resumed:
    """Awaiting this finishes a started step, as if it had been awaited from the beginning."""

    __slots__ = ("_future", "_step")

    def __init__(self, step: Generator[Any, Any, Any], future: Any) -> None:
        self._step = step
        self._future = future

    def __await__(self) -> Generator[Any, Any, Any]:
        step, future = self._step, self._future
        while True:
            try:
                sent = yield future
            except BaseException as exc:  # noqa: BLE001 - cancellation goes to the step, as with await
                try:
                    future = step.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    future = step.send(sent)
                except StopIteration as done:
                    return done.value


async def _abandon(step: Generator[Any, Any, Any], exc: BaseException) -> None:
    """A started step whose result is no longer wanted gets ``exc``, so its cleanup runs now."""
    try:
        future = step.throw(exc)
    except BaseException:  # noqa: BLE001 - the step ended, by exc or its own error: both are expected
        return
    try:
        await _Resumed(step, future)
    except BaseException:  # noqa: BLE001 - the caller raises the original failure
        return
