"""Server-sent events: frames written as the provider yields them, no added delay.

Llama Stack routes never send ``data: [DONE]`` (the 0.2.x client fails on it); OpenAI routes
end with it unless the caller is a Llama Stack client. An error after the stream began is one
last ``data: {"error": ...}`` frame. A client that goes away cancels the handler task, which
closes the provider's iterator, which closes the upstream request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from stackd.errors import StackdError

__all__ = ["stream_sse"]

log = logging.getLogger("stackd.server")

_DONE = b"data: [DONE]\n\n"


async def stream_sse(
    request: web.Request,
    events: AsyncIterator[Any],
    *,
    done: bool,
    headers: dict[str, str] | None = None,
    encode: Callable[[Any], bytes] = orjson.dumps,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **(headers or {}),
    })
    await response.prepare(request)
    write = response.write
    try:
        async for event in events:
            await write(b"data: " + encode(event) + b"\n\n")
    except StackdError as exc:
        log.warning("stream on %s failed: %s", request.path, exc.message)
        await write(b"data: " + orjson.dumps({"error": {"message": exc.message, "type": exc.type}}) + b"\n\n")
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("stream on %s failed", request.path)
        await write(b'data: {"error": {"message": "internal server error", "type": "internal_error"}}\n\n')
    else:
        if done:
            await write(_DONE)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    await response.write_eof()
    return response
