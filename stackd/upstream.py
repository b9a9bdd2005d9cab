"""Helpers for providers that talk HTTP to an upstream server (vLLM, Ollama, ...).

One pooled :class:`aiohttp.ClientSession` per provider (:func:`make_session`), and one mapping
of transport failures to stackd's statuses (:func:`upstream_errors`), so every remote plugin
fails the same way: cannot connect -> 503 naming the provider and URL, timeout -> 504,
upstream 4xx -> the same 4xx with the upstream's message, garbage -> 502.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from stackd.errors import (
    BadRequest,
    FieldError,
    StackdError,
    UpstreamBadResponse,
    UpstreamClientError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from stackd.json_depth import ANSWER_MAX_DEPTH, deeper_than

__all__ = [
    "check_status",
    "iter_ndjson",
    "iter_sse",
    "make_session",
    "read_json",
    "upstream_errors",
]


def make_session(
    *,
    timeout: float | None = None,
    tls_verify: bool | str | Path = True,
    headers: dict[str, str] | None = None,
    limit: int = 0,
) -> aiohttp.ClientSession:
    """The provider's one session: pooled keep-alive connections, no per-request set-up.

    ``tls_verify`` is True (system CAs), False (no verification) or a CA bundle path.
    ``timeout`` bounds the whole exchange except streams' gaps, which ``sock_read`` bounds.
    """
    ssl_ctx: ssl.SSLContext | bool
    if tls_verify is True:
        ssl_ctx = True
    elif tls_verify is False:
        ssl_ctx = False
    else:
        ssl_ctx = ssl.create_default_context(cafile=str(tls_verify))
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_ctx, enable_cleanup_closed=False)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout or 30, 30), sock_read=timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout,
        headers=headers,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        raise_for_status=False,
        auto_decompress=True,
    )


@contextlib.contextmanager
def upstream_errors(provider_id: str, url: str) -> Iterator[None]:
    """Map transport failures inside the block to stackd errors naming the provider and URL."""
    try:
        yield
    except StackdError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        # Not even a connection: the upstream is down or unreachable (503), not slow (504).
        raise UpstreamUnavailable(f"provider {provider_id!r}: cannot connect to {url} (connection timed out)") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"provider {provider_id!r}: {url} did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(
            f"provider {provider_id!r}: cannot connect to {url} ({exc.os_error.strerror or exc.os_error})"
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamBadResponse(
            f"provider {provider_id!r}: {url} closed the connection mid-answer"
        ) from exc
    except aiohttp.ClientError as exc:
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
    if raw is not None and (len(raw) <= 2 * ANSWER_MAX_DEPTH
                            or raw.count(b"{") + raw.count(b"[") <= ANSWER_MAX_DEPTH):
        # Stream events are small and many: N levels need 2N bytes and N opening brackets, and
        # these two C-speed tests (about 0.03 and 0.25 µs) spare most events the walk (1.5 µs).
        return
    loc = deeper_than(data, ANSWER_MAX_DEPTH)
    if loc is not None:
        raise UpstreamBadResponse(
            f"provider {provider_id!r} answered {what} nested deeper than {ANSWER_MAX_DEPTH} levels "
            f"(at {loc}); stackd does not pass on such answers"
        )


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


async def check_status(resp: aiohttp.ClientResponse, provider_id: str) -> None:
    """Raise the stackd error for a non-2xx upstream answer (the body is read to get its message)."""
    if resp.status < 400:
        return
    body = await resp.read()
    message = _message_of(body)
    if 400 <= resp.status < 500:
        raise UpstreamClientError(resp.status, f"provider {provider_id!r}: {message}")
    if resp.status == 503:
        raise UpstreamUnavailable(f"provider {provider_id!r} is unavailable: {message}")
    if resp.status == 504:
        raise UpstreamTimeout(f"provider {provider_id!r} timed out: {message}")
    raise UpstreamBadResponse(f"provider {provider_id!r} failed with HTTP {resp.status}: {message}")


async def read_json(resp: aiohttp.ClientResponse, provider_id: str) -> Any:
    """The whole JSON body of a 2xx answer, or 502 when it is not JSON."""
    await check_status(resp, provider_id)
    body = await resp.read()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse(
            f"provider {provider_id!r} answered HTTP {resp.status} with a body that is not JSON"
        ) from None
    _too_deep(data, provider_id, "JSON")
    return data


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's lines, however long (aiohttp's readline caps a line at its buffer limit)."""
    pending = b""
    async for block in resp.content.iter_any():
        if pending:
            block = pending + block
        lines = block.split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line
    if pending:
        yield pending


async def iter_sse(resp: aiohttp.ClientResponse, provider_id: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of an OpenAI-style SSE stream, up to ``data: [DONE]``.

    A stream that ends without ``[DONE]`` was cut: that raises 502, which the server turns
    into one error frame.
    """
    done = False
    async for raw in _lines(resp):
        if not raw.startswith(b"data:"):
            continue  # blank separators, comments, event:/id: fields, keep-alives
        payload = raw[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"provider {provider_id!r} sent a stream event that is not JSON") from None
        if isinstance(data, dict) and "error" in data and "choices" not in data and "data" not in data:
            raise UpstreamBadResponse(f"provider {provider_id!r} failed mid-stream: {_message_of(payload)}")
        _too_deep(data, provider_id, "a stream event", payload)
        yield data
    if not done:
        raise UpstreamBadResponse(f"provider {provider_id!r}: the stream ended before it was complete")


async def iter_ndjson(resp: aiohttp.ClientResponse, provider_id: str) -> AsyncIterator[dict[str, Any]]:
    """Objects of a newline-delimited JSON stream (Ollama's streaming format)."""
    async for raw in _lines(resp):
        line = raw.strip()
        if not line:
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"provider {provider_id!r} sent a stream line that is not JSON") from None
        _too_deep(data, provider_id, "a stream line", line)
        yield data
