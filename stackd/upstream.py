"""Helpers for providers that talk HTTP to an upstream server (vLLM, Ollama, ...).

One pooled :class:`aiohttp.ClientSession` per provider (:func:`make_session`), and one mapping
of transport failures to stackd's statuses (:func:`upstream_errors`), so every remote plugin
fails the same way: cannot connect -> 503 naming the provider and URL, timeout -> 504,
upstream 4xx -> the same 4xx with the upstream's message, garbage -> 502.

What an upstream sends is bounded while it is read, never after: a body over
:attr:`UpstreamLimits.max_body_bytes` or a stream line over
:attr:`UpstreamLimits.max_line_bytes` is 502 (an error frame once a stream began), and a
stream that sends no event for its idle timeout is 504. The core builds the limits from
``server.*`` and hands them to each provider factory as ``deps["__upstream_limits__"]``.

Every session carries the request's ``X-Request-ID`` to the upstream (when a request is being
served), and a session made with ``provider_id`` times each upstream answer's head into
``stackd_upstream_request_duration_seconds``; each failure mapped here is counted once, where
it is raised, in ``stackd_upstream_errors_total`` by kind (:mod:`stackd.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from itertools import repeat
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from stackd import metrics
from stackd.errors import (
    BadRequest,
    FieldError,
    StackdError,
    UpstreamBadResponse,
    UpstreamClientError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from stackd.json_depth import ANSWER_MAX_DEPTH, deeper_than, may_nest_deeper
from stackd.observe import current

__all__ = [
    "DEFAULT_LIMITS",
    "SSEEvent",
    "SSEStream",
    "UpstreamLimits",
    "check_status",
    "iter_ndjson",
    "iter_sse",
    "limits_of",
    "make_session",
    "open_sse",
    "relabel_bytes",
    "read_json",
    "stream_timeout",
    "upstream_errors",
]

MiB = 1024 * 1024


@attrs.frozen
class UpstreamLimits:
    """How much one upstream answer may weigh (``server.max_upstream_body_bytes`` and
    ``server.max_upstream_line_bytes``); over either, the answer is 502 instead of memory."""

    max_body_bytes: int = 64 * MiB
    max_line_bytes: int = 1 * MiB


DEFAULT_LIMITS = UpstreamLimits()


class SSEEvent(dict[str, Any]):
    """A stream event as parsed, with ``raw``: the upstream's own bytes of it (the ``data:``
    payload), so a frame that nothing changed goes out as it came instead of serialised again.

    Whoever changes the dict must set ``raw`` to the bytes of the changed event, or to None
    (the event is then serialised from the dict). Only the router's relabel changes it.
    """

    __slots__ = ("raw",)

    def __init__(self, data: dict[str, Any], raw: bytes | None) -> None:
        super().__init__(data)
        self.raw = raw


def relabel_bytes(raw: bytes, old: bytes, new: bytes) -> bytes | None:
    """``raw`` (a JSON object's bytes) with its top-level ``old`` member (``"model":"name"``,
    as compact JSON writes it) replaced by ``new``; None when that cannot be told safely.

    In valid JSON, ``"model":"`` with bare quotes is never inside a string (a string escapes
    its quotes), so a match is a ``model`` member. It is the top-level one when no other
    object or array opens before it, and the only one when no other ``"model"`` follows.
    Anything else (other spacing, members before it nested, a second one) returns None and the
    event is serialised from its dict, so the answer is the same either way, only slower.
    """
    i = raw.find(old)
    if i < 0 or raw.find(b"{", 1, i) >= 0 or raw.find(b"[", 0, i) >= 0:
        return None
    end = i + len(old)
    if raw.find(b'"model"', end) >= 0:
        return None
    return b"".join((raw[:i], new, raw[end:]))

# An error body is read only for its message (500 characters of it are kept).
_MAX_ERROR_BODY = 64 * 1024


def limits_of(deps: Mapping[str, Any]) -> UpstreamLimits:
    """The limits the core handed a provider factory (the defaults when built outside a stack)."""
    limits = deps.get("__upstream_limits__")
    return limits if isinstance(limits, UpstreamLimits) else DEFAULT_LIMITS


def make_session(
    *,
    timeout: float | None = None,
    total_timeout: float | None = None,
    tls_verify: bool | str | Path = True,
    headers: dict[str, str] | None = None,
    limit: int = 0,
    provider_id: str | None = None,
) -> aiohttp.ClientSession:
    """The provider's one session: pooled keep-alive connections, no per-request set-up.

    Requests made while a request is served carry its ``X-Request-ID``; with ``provider_id``
    (the metrics label), the wait for each answer's head is timed.

    ``tls_verify`` is True (system CAs), False (no verification) or a CA bundle path.
    ``timeout`` bounds each wait for a byte; ``total_timeout`` the whole exchange, body
    included, so an upstream that drips bytes is still cut off. Streams lift the total with
    ``timeout=stream_timeout(timeout)`` and are bounded by :func:`iter_sse`'s timeouts instead.
    """
    ssl_ctx: ssl.SSLContext | bool
    if tls_verify is True:
        ssl_ctx = True
    elif tls_verify is False:
        ssl_ctx = False
    else:
        ssl_ctx = ssl.create_default_context(cafile=str(tls_verify))
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_ctx, enable_cleanup_closed=False)
    client_timeout = aiohttp.ClientTimeout(
        total=total_timeout, sock_connect=min(timeout or 30, 30), sock_read=timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout,
        headers=headers,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        raise_for_status=False,
        auto_decompress=True,
        middlewares=(_observed(provider_id),),
    )


def _observed(provider_id: str | None) -> ClientMiddlewareType:
    """The session's one client middleware: the request id out, the time to the answer's head in."""
    duration = metrics.upstream_duration(provider_id) if provider_id is not None else None
    clock = time.perf_counter

    async def middleware(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
        obs = current.get()
        if obs is None:
            return await handler(request)
        request.headers["X-Request-ID"] = obs.request_id
        started = clock()
        try:
            return await handler(request)
        finally:
            waited = clock() - started
            obs.upstream += waited
            if duration is not None:
                duration.observe(waited)

    return middleware


def stream_timeout(timeout: float | None, idle_timeout: float | None = None) -> aiohttp.ClientTimeout:
    """The per-request timeout of a streaming call: no total (a stream may run long), each
    wait for a byte bounded by ``timeout``; pass it as ``session.post(..., timeout=...)``.

    With the stream's ``idle_timeout`` (the readers' bound on each wait for an event) at most
    ``timeout``, the byte bound adds nothing and is left out: aiohttp moves that timer on every
    read, which a token-by-token stream pays once per token.
    """
    covered = idle_timeout is not None and (timeout is None or idle_timeout <= timeout)
    return aiohttp.ClientTimeout(total=None, sock_connect=min(timeout or 30, 30),
                                 sock_read=None if covered else timeout)


@contextlib.contextmanager
def upstream_errors(provider_id: str, url: str) -> Iterator[None]:
    """Map transport failures inside the block to stackd errors naming the provider and URL."""
    try:
        yield
    except StackdError:
        raise  # counted where it was raised
    except aiohttp.ConnectionTimeoutError as exc:
        # Not even a connection: the upstream is down or unreachable (503), not slow (504).
        metrics.upstream_error(provider_id, "refused")
        raise UpstreamUnavailable(f"provider {provider_id!r}: cannot connect to {url} (connection timed out)") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        metrics.upstream_error(provider_id, "timeout")
        raise UpstreamTimeout(f"provider {provider_id!r}: {url} did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        metrics.upstream_error(provider_id, "refused")
        raise UpstreamUnavailable(
            f"provider {provider_id!r}: cannot connect to {url} ({exc.os_error.strerror or exc.os_error})"
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        metrics.upstream_error(provider_id, "bad_answer")
        raise UpstreamBadResponse(
            f"provider {provider_id!r}: {url} closed the connection mid-answer"
        ) from exc
    except aiohttp.ClientError as exc:
        metrics.upstream_error(provider_id, "bad_answer")
        raise UpstreamBadResponse(f"provider {provider_id!r}: {url}: {exc}") from exc
    except ValueError as exc:
        # aiohttp refuses to send a header value holding CR, LF, NUL or another control
        # character (header injection). Such a value came from the caller's provider data or
        # the provider's config: the request cannot be sent as asked, which is not a crash.
        if "control character" not in str(exc) and "Newline or carriage return" not in str(exc):
            raise
        raise BadRequest(
            f"provider {provider_id!r}: a value to be sent to {url} as an HTTP header contains a control "
            "character (CR, LF, NUL...); remove it from X-LlamaStack-Provider-Data or the provider's config",
            [FieldError("$.headers", "a header value contains a control character")],
        ) from None


def _too_deep(data: Any, provider_id: str, what: str, raw: bytes | None = None) -> None:
    # An answer nested deeper than stackd could write back (or store and list) is refused here,
    # as a bad answer, rather than failing later as a 500 or breaking a stored list.
    if raw is not None and not may_nest_deeper(raw, ANSWER_MAX_DEPTH):
        return
    loc = deeper_than(data, ANSWER_MAX_DEPTH)
    if loc is not None:
        raise _bad_answer(
            provider_id,
            f"provider {provider_id!r} answered {what} nested deeper than {ANSWER_MAX_DEPTH} levels "
            f"(at {loc}); stackd does not pass on such answers"
        )


def _bad_answer(provider_id: str, message: str) -> UpstreamBadResponse:
    """A 502 for an answer stackd cannot pass on, counted as ``bad_answer``."""
    metrics.upstream_error(provider_id, "bad_answer")
    return UpstreamBadResponse(message)


def _message_of(body: bytes) -> str:
    """The human part of an upstream error body, whatever its shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if isinstance(err, list) and err and isinstance(err[0], dict):
            err = "; ".join(str(e.get("msg", e)) for e in err)
        if err is not None:
            return str(err)
    return str(data)[:500]


async def check_status(resp: aiohttp.ClientResponse, provider_id: str, *, own_credentials: bool = False) -> None:
    """Raise the stackd error for a non-2xx upstream answer (the body is read to get its message).

    ``own_credentials``: the request carried the provider's configured credentials (or none a
    client could supply). A 401/403 then means stackd's setup is wrong, so it is a 502 saying
    so: passed on as 401, a client would believe its own token to stackd was refused.
    """
    if resp.status < 400:
        return
    metrics.upstream_error(provider_id, "4xx" if resp.status < 500 else "5xx")
    # Only the message is wanted: a huge error body must not be held whole.
    body = await resp.content.read(_MAX_ERROR_BODY)
    message = _message_of(body)
    if own_credentials and resp.status in (401, 403):
        # The upstream's message is left out: some repeat the key they refused.
        raise UpstreamBadResponse(
            f"provider {provider_id!r}: the provider's credentials were refused by its upstream "
            f"(HTTP {resp.status}); check the api token or key in this provider's config"
        )
    if 400 <= resp.status < 500:
        raise UpstreamClientError(resp.status, f"provider {provider_id!r}: {message}")
    if resp.status == 503:
        raise UpstreamUnavailable(f"provider {provider_id!r} is unavailable: {message}")
    if resp.status == 504:
        raise UpstreamTimeout(f"provider {provider_id!r} timed out: {message}")
    raise UpstreamBadResponse(f"provider {provider_id!r} failed with HTTP {resp.status}: {message}")


async def read_json(
    resp: aiohttp.ClientResponse, provider_id: str, limits: UpstreamLimits = DEFAULT_LIMITS, *,
    own_credentials: bool = False,
) -> Any:
    """The whole JSON body of a 2xx answer; 502 when it is not JSON or over ``max_body_bytes``."""
    await check_status(resp, provider_id, own_credentials=own_credentials)
    body = await _read_body(resp, provider_id, limits.max_body_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad_answer(provider_id,
                          f"provider {provider_id!r} answered HTTP {resp.status} with a body that is not JSON"
        ) from None
    _too_deep(data, provider_id, "JSON", body)
    return data


def _where(resp: aiohttp.ClientResponse) -> str:
    # Messages reach clients and logs: no user:password or query (an API key may sit in either).
    return str(resp.url.with_user(None).with_query(None))


def _too_large(
    resp: aiohttp.ClientResponse, provider_id: str, what: str, limit: int, setting: str
) -> UpstreamBadResponse:
    # The rest of the answer is not read: drop the connection instead of draining it.
    resp.close()
    return _bad_answer(
        provider_id,
        f"provider {provider_id!r}: {_where(resp)} sent {what} over the limit of {limit} bytes; "
        f"raise server.{setting} to allow more"
    )


async def _read_body(resp: aiohttp.ClientResponse, provider_id: str, limit: int) -> bytes:
    """The body, refused as soon as it is known to be over ``limit``: by its Content-Length
    before reading a byte, else (chunked, compressed) while it arrives."""
    length = resp.content_length
    if length is not None and length > limit and not resp.headers.get("Content-Encoding"):
        raise _too_large(resp, provider_id, f"an answer of {length} bytes,", limit, "max_upstream_body_bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        block = await resp.content.read(256 * 1024)
        if not block:
            break
        size += len(block)
        if size > limit:
            raise _too_large(resp, provider_id, "an answer", limit, "max_upstream_body_bytes")
        parts.append(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Lines:
    """Splits the body's blocks into lines, each at most ``limit`` bytes (aiohttp's readline
    would cap them at its buffer size with an error that says nothing). A plain object, not an
    async generator: the readers loop over blocks and lines themselves, one layer per event less.

    The lines before one over the limit are still handed out; the 502 comes on the next call.
    """

    __slots__ = ("_head", "_limit", "_provider_id", "_resp", "_size", "over")

    def __init__(self, resp: aiohttp.ClientResponse, provider_id: str, limit: int) -> None:
        self._resp = resp
        self._provider_id = provider_id
        self._limit = limit
        self._head: list[bytes] = []  # the pieces of a line that has not ended yet
        self._size = 0
        self.over = False

    def error(self) -> UpstreamBadResponse:
        return _line_too_long(self._resp, self._provider_id, self._limit)

    def feed(self, block: bytes) -> list[bytes]:
        """The lines this block ends."""
        lines = block.split(b"\n")
        tail = lines.pop()
        limit = self._limit
        if lines:
            if self._head:
                self._head.append(lines[0])
                lines[0] = b"".join(self._head)
                self._head = []
            if max(map(len, lines)) > limit:
                for i, line in enumerate(lines):
                    if len(line) > limit:
                        self.over = True
                        return lines[:i]
            self._size = 0
        if tail:
            self._head.append(tail)
            self._size += len(tail)
            if self._size > limit:
                self.over = True
        return lines

    @property
    def pending(self) -> bool:
        """Whether a line has begun that no block has ended yet."""
        return bool(self._head)

    def end(self) -> list[bytes]:
        """The last line, when the body does not end with a newline (given once)."""
        head, self._head = self._head, []
        return [b"".join(head)] if head else []


def _line_too_long(resp: aiohttp.ClientResponse, provider_id: str, limit: int) -> UpstreamBadResponse:
    return _too_large(resp, provider_id, "a stream line", limit, "max_upstream_line_bytes")


class _Watchdog:
    """Ends a stream whose upstream keeps stackd waiting too long for its next event.

    aiohttp's ``sock_read`` restarts with every byte, so an upstream that drips bytes is never
    cut off by it; this counts whole events. It costs one clock read per event and at most one
    timer per gap, and it only counts time spent waiting on the upstream: while the consumer
    (a slow client) holds the stream between events, the clock is paused. On expiry the read
    in progress fails with 504 and the connection is dropped.
    """

    __slots__ = ("_first_by", "_loop", "_provider_id", "_resp", "clock", "deadline", "first_timer", "handle", "idle")

    def __init__(
        self, resp: aiohttp.ClientResponse, provider_id: str, first_event_by: float | None, idle: float | None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._resp = resp
        self._provider_id = provider_id
        self._first_by = first_event_by
        self.idle = idle
        self.clock = self._loop.time
        self.handle: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        # The pending timer is the first event's: it may fire long after the idle bound
        # (stream_first_byte_timeout is usually the longer), so the first re-arm replaces it.
        self.first_timer = False
        if first_event_by is not None:
            self.deadline = first_event_by
            self.arm()
            self.first_timer = True
        elif idle is not None:
            self.deadline = self.clock() + idle
            self.arm()

    # The readers set ``deadline`` themselves on the per-event path (a method call per event
    # costs more than the rest of it): None while an event is out, the next one's deadline when
    # the consumer asks for it, then ``arm()`` if ``handle`` is None or ``first_timer``. The timer
    # is not moved per event: it fires at the old deadline, finds a later one and sleeps again.

    def arm(self) -> None:
        if self.first_timer:
            self.first_timer = False
            self.cancel()
        if self.deadline is not None:
            self.handle = self._loop.call_at(self.deadline, self._check)

    def _check(self) -> None:
        self.handle = None
        deadline = self.deadline
        if deadline is None:
            return  # an event is out with the consumer: the readers re-arm when it asks again
        if self.clock() < deadline:
            self.arm()
            self.first_timer = deadline == self._first_by  # woken early: still the first event's timer
            return
        what = (
            "did not send its first stream event in time (stream_first_byte_timeout)"
            if deadline == self._first_by
            else f"sent no stream event for {self.idle:g} s (stream_idle_timeout)"
        )
        message = f"provider {self._provider_id!r}: {_where(self._resp)} {what}"
        metrics.upstream_error(self._provider_id, "timeout")
        self._resp.content.set_exception(UpstreamTimeout(message))
        self._resp.close()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def _next_lines(blocks: AsyncIterator[bytes], lines: _Lines) -> list[bytes] | None:
    """The lines the next block ends; at the end of the body its unterminated last line
    (once), then None."""
    if lines.over:
        raise lines.error()
    try:
        block = await blocks.__anext__()
    except StopAsyncIteration:
        return lines.end() or None
    return lines.feed(block)


def iter_sse(
    resp: aiohttp.ClientResponse,
    provider_id: str,
    limits: UpstreamLimits = DEFAULT_LIMITS,
    *,
    first_event_by: float | None = None,
    idle_timeout: float | None = None,
) -> SSEStream:
    """The JSON payloads of an OpenAI-style SSE stream, up to ``data: [DONE]``.

    A stream that ends without ``[DONE]`` was cut: that raises 502, which the server turns
    into one error frame. ``first_event_by`` (a ``loop.time()`` deadline, usually set when
    the request was sent) bounds the wait for the first event, ``idle_timeout`` (seconds) each
    wait for the next one: past either, 504. Comments and keep-alives are not events.

    Each event is an :class:`SSEEvent` (one that is not a JSON object is 502): its ``raw`` bytes
    are the payload as the upstream sent it, so the server can forward them instead of
    serialising the dict again.
    The caller keeps the response; :func:`open_sse` hands it over instead.
    """
    return SSEStream(_sse_reads(resp, provider_id, limits, first_event_by, idle_timeout, None))


async def open_sse(
    resp: aiohttp.ClientResponse,
    provider_id: str,
    url: str,
    limits: UpstreamLimits = DEFAULT_LIMITS,
    *,
    first_event_by: float | None = None,
    idle_timeout: float | None = None,
) -> SSEStream:
    """The events of :func:`iter_sse`, owning ``resp``: the stream a provider returns as is.

    Transport failures while reading become stackd errors naming ``url`` (as in
    :func:`upstream_errors`). A stream read to its end releases the connection to the pool;
    one closed early (the client left) or broken drops it, so the server stops generating.
    The stream is already started when it is returned, so ``aclose()`` releases the response
    even if no event was ever read. One reader from the upstream's bytes to the router, not a
    provider's generator around this one: each layer costs every event.
    """
    reads = _sse_reads(resp, provider_id, limits, first_event_by, idle_timeout, url)
    await reads.__anext__()  # past the primer: inside the ``try`` that owns ``resp``
    return SSEStream(reads)


# What one read of the upstream delivered: each event's payload bytes (None where they cannot be
# forwarded as they are) and the event parsed (a JSON object), in two lists of one length; then,
# when the read held nothing but those events' frames as the upstream wrote them
# (``data: {…}\n\n`` each, see :func:`_whole_events`), those bytes, else None.
Read = tuple[list[bytes | None], list[dict[str, Any]], bytes | None]

# Yielded once by an owning stream before its first read (see open_sse).
_PRIMER: Read = ([], [], None)


class SSEStream:
    """The events of an upstream's SSE stream: an async iterator of events like any provider's
    stream (each an :class:`SSEEvent`), read from the upstream a read at a time. An event that is
    not a JSON object is a bad answer (502), like one that is not JSON.

    The server's SSE writer takes whole reads (:meth:`next_read`): the events that arrived
    together are relabelled, stored and written together, with no step per event between the
    upstream's bytes and the client's. Events are parsed one by one (a batch parse of a read
    could be fooled into accepting payloads that are not JSON each on their own).
    """

    __slots__ = ("_events", "_i", "_payloads", "reads")

    def __init__(self, reads: AsyncGenerator[Read, None]) -> None:
        self.reads = reads
        self._payloads: list[bytes | None] = []
        self._events: list[dict[str, Any]] = []
        self._i = 0

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> Any:
        i = self._i
        while i >= len(self._events):
            self._payloads, self._events, _ = await self.reads.__anext__()
            i = 0
        self._i = i + 1
        return SSEEvent(self._events[i], self._payloads[i])

    async def next_read(self) -> Read:
        """The events of the next read (after any of the last one not yet taken one by one);
        ``StopAsyncIteration`` at the end, and the read's failure after the events before it."""
        i = self._i
        if i < len(self._events):
            read = (self._payloads[i:], self._events[i:], None)
            self._payloads, self._events, self._i = [], [], 0
            return read
        return await self.reads.__anext__()

    async def aclose(self) -> None:
        await self.reads.aclose()


async def _sse_reads(
    resp: aiohttp.ClientResponse,
    provider_id: str,
    limits: UpstreamLimits,
    first_event_by: float | None,
    idle_timeout: float | None,
    url: str | None,
) -> AsyncGenerator[Read, None]:
    """:func:`iter_sse`'s events a read at a time; with ``url``, :func:`open_sse`'s (primed,
    owning ``resp``). A read's failure (a payload that is not JSON, an error event, a line
    over the limit) comes after the read's events before it, on the next step."""
    watchdog = _Watchdog(resp, provider_id, first_event_by, idle_timeout)
    clock = watchdog.clock
    lines = _Lines(resp, provider_id, limits.max_line_bytes)
    blocks = resp.content.iter_any().__aiter__()
    finished = False
    errors = upstream_errors(provider_id, url) if url is not None else contextlib.nullcontext()
    try:
        if url is not None:
            yield _PRIMER
        with errors:
            while True:
                if lines.over:
                    raise lines.error()
                try:
                    block = await blocks.__anext__()
                except StopAsyncIteration:
                    batch = lines.end()
                    if not batch:
                        break
                    whole = None
                else:
                    whole = None if lines.pending else _whole_events(block, limits.max_line_bytes)
                    if whole is None:
                        batch = lines.feed(block)
                if whole is not None:
                    frames, payloads, events, finished = whole
                    failure = None
                else:
                    frames = None
                    payloads, events, failure, finished = _events_of(batch, provider_id)
                if events:
                    watchdog.deadline = None  # the consumer's time with the events is not the upstream's
                    yield payloads, events, frames
                if failure is not None:
                    raise failure
                if finished:
                    return
                if events and idle_timeout is not None:
                    watchdog.deadline = clock() + idle_timeout
                    if watchdog.handle is None or watchdog.first_timer:
                        watchdog.arm()
    finally:
        watchdog.cancel()
        if url is not None:
            if finished:
                resp.release()  # back to the pool when the server ended the answer cleanly
            else:
                resp.close()
    raise _bad_answer(provider_id, f"provider {provider_id!r}: the stream ended before it was complete")


_DONE_FRAME = b"data: [DONE]\n\n"


def _whole_events(
    block: bytes, line_limit: int
) -> tuple[bytes, list[bytes | None], list[dict[str, Any]], bool] | None:
    """A read that is nothing but whole events, each ``data: {…}`` on a line of its own and a blank
    line, perhaps ending with ``data: [DONE]`` (what OpenAI, vLLM and llama.cpp send): its frames
    without ``[DONE]``, each event's payload and parse, and whether ``[DONE]`` came. None for any
    other read, or one with something :func:`_events_of` has to refuse or say: that path reads it.

    Tested on the read as a whole (a few C-speed counts), so no step per event is taken in Python
    until the store's: the frames can go to the client as they came (relabelled in one replace,
    :meth:`stackd.relabel.Relabelled.frames`).
    """
    done = block.endswith(_DONE_FRAME)
    if done:
        block = block[: -len(_DONE_FRAME)]
        if not block:
            return block, [], [], True
    if not (block.startswith(b"data: {") and block.endswith(b"}\n\n")):
        return None
    payloads: list[bytes | None] = block[6:-2].split(b"\n\ndata: ")  # type: ignore[assignment]
    n = len(payloads)
    # No line break in any payload (SSE would read two lines) and "}" and "{" around every cut: the
    # block is nothing but these frames, each "{…}" with nothing around it.
    joined = b"".join(payloads)  # type: ignore[arg-type]
    if joined.find(b"\n") >= 0 or joined.find(b"\r") >= 0 or (n > 1 and block.count(b"}\n\ndata: {") != n - 1):
        return None
    longest = max(map(len, payloads))  # type: ignore[arg-type]
    if longest + 6 > line_limit:
        return None
    # Only an event that could nest too deep needs _events_of's walk. Most reads are ruled out at
    # once: no event is long enough (N levels take 2N bytes), or the read has too few brackets.
    if (longest > 2 * ANSWER_MAX_DEPTH and may_nest_deeper(block, ANSWER_MAX_DEPTH)
            and any(may_nest_deeper(p, ANSWER_MAX_DEPTH) for p in payloads)):  # type: ignore[arg-type]
        return None
    try:
        # Each payload parsed on its own (never joined: see SSEStream); each starts with "{", so
        # each that parses is an object.
        events = list(map(orjson.loads, payloads))  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None
    if any(map(operator.contains, events, repeat("error"))):
        # Any "error" member, a superset of _events_of's error events: that path tells which it is.
        return None
    return block, payloads, events, done


def _events_of(
    batch: list[bytes], provider_id: str
) -> tuple[list[bytes | None], list[dict[str, Any]], StackdError | None, bool]:
    """The events of these SSE lines, line by line: payloads, parses, the failure that ends them
    (None) and whether ``[DONE]`` came."""
    payloads: list[bytes | None] = []
    events: list[dict[str, Any]] = []
    for raw in batch:
        if not raw or not raw.startswith(b"data:"):
            continue  # blank separators, comments, event:/id: fields, keep-alives
        payload = raw[5:].strip()
        if payload == b"[DONE]":
            return payloads, events, None, True
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payloads, events, _bad_answer(
                provider_id, f"provider {provider_id!r} sent a stream event that is not JSON"), False
        if type(data) is not dict:
            return payloads, events, _bad_answer(
                provider_id, f"provider {provider_id!r} sent a stream event that is not a JSON object"), False
        if "error" in data and "choices" not in data and "data" not in data:
            return payloads, events, _bad_answer(
                provider_id, f"provider {provider_id!r} failed mid-stream: {_message_of(payload)}"), False
        try:
            _too_deep(data, provider_id, "a stream event", payload)
        except StackdError as exc:
            return payloads, events, exc, False
        # A CR is JSON whitespace but ends an SSE line: such a payload is not forwarded as is.
        payloads.append(None if payload.find(b"\r") >= 0 else payload)
        events.append(data)
    return payloads, events, None, False


async def iter_ndjson(
    resp: aiohttp.ClientResponse,
    provider_id: str,
    limits: UpstreamLimits = DEFAULT_LIMITS,
    *,
    first_event_by: float | None = None,
    idle_timeout: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Objects of a newline-delimited JSON stream (Ollama's streaming format); limits and
    timeouts as for :func:`iter_sse`, each object counting as an event."""
    watchdog = _Watchdog(resp, provider_id, first_event_by, idle_timeout)
    clock = watchdog.clock
    lines = _Lines(resp, provider_id, limits.max_line_bytes)
    blocks = resp.content.iter_any().__aiter__()
    try:
        while (batch := await _next_lines(blocks, lines)) is not None:
            for raw in batch:
                line = raw.strip()
                if not line:
                    continue
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise _bad_answer(provider_id,
                                      f"provider {provider_id!r} sent a stream line that is not JSON") from None
                _too_deep(data, provider_id, "a stream line", line)
                watchdog.deadline = None  # the consumer's time with the event is not the upstream's
                yield data
                if idle_timeout is not None:
                    watchdog.deadline = clock() + idle_timeout
                    if watchdog.handle is None or watchdog.first_timer:
                        watchdog.arm()
    finally:
        watchdog.cancel()
