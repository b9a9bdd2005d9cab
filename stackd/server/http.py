"""Reading requests and writing JSON (parsed once, with orjson), and what handlers share."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from stackd.apis.context import CallContext
from stackd.errors import (
    BadRequest,
    FieldError,
    PayloadTooLarge,
    RequestTimeout,
    StackdError,
    UnsupportedMediaType,
    UpstreamBadResponse,
)
from stackd.json_depth import deeper_than, may_nest_deeper
from stackd.server.keys import BODY_TIMEOUT, CALLER, DISCARD_BODY, MAX_BODY, MAX_JSON_DEPTH, REQUEST_ID

__all__ = ["body_too_large", "context", "json_response", "provider_data", "read_json", "request_id"]

_JSON = "application/json"


def _refused(request: web.Request, exc: StackdError) -> StackdError:
    """``exc``, for a body refused before it was read to the end: the connection then closes
    soon after the answer instead of reading (or inflating) the rest (stackd.server.runner)."""
    request[DISCARD_BODY] = True
    return exc


# What aiohttp's parser decodes; it passes any other Content-Encoding through undecoded, which
# would then be read as JSON (br and zstd are refused by the parser itself unless installed).
_DECODED = frozenset({"gzip", "deflate", "br", "zstd", "identity"})


async def _read_body(request: web.Request) -> bytes:
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.lower() not in _DECODED:
        raise _refused(request, UnsupportedMediaType(
            "the body's Content-Encoding is not supported; send it as gzip or deflate, "
            "or uncompressed without the header"))
    # A declared length over the limit is refused before reading: otherwise a client that
    # announces more than it sends holds the request open until the read times out.
    declared = request.content_length
    if declared is not None and declared > request.app[MAX_BODY]:
        raise _refused(request, body_too_large(request))
    timeout = request.app[BODY_TIMEOUT]
    try:
        # aiohttp has no time limit on a body: a client sending all but its last byte would
        # hold its connection (and a file descriptor) for ever. request.read() stops at
        # client_max_size as it goes (decompressed bytes counted), so a bomb inflates no further.
        if request.content.is_eof():  # the usual case: the body came with the headers, no timer needed
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise _refused(request, RequestTimeout(
            f"the request body did not arrive within {timeout:g} s (server.body_timeout)")) from None
    except web.HTTPRequestEntityTooLarge:
        raise _refused(request, body_too_large(request)) from None
    except (HttpProcessingError, web.RequestPayloadError):
        # The parser failed on the body: most often it does not decode as its Content-Encoding.
        encoding = request.headers.get("Content-Encoding")
        if encoding:
            raise _refused(request, BadRequest(
                f"the body could not be decoded as Content-Encoding {encoding!r}; "
                "send it compressed that way, or uncompressed without the header",
                [FieldError("$", "body does not match its Content-Encoding")])) from None
        raise _refused(request, BadRequest(
            "the body could not be read: it was cut short or its chunked framing is broken",
            [FieldError("$", "malformed body")])) from None


def body_too_large(request: web.Request) -> PayloadTooLarge:
    """The one 413 of a request body over ``server.max_body_bytes``, wherever it is found."""
    return PayloadTooLarge(
        f"request body too large (limit {request.app[MAX_BODY]} bytes; raise server.max_body_bytes to allow more)"
    )


def _check_content_type(request: web.Request) -> None:
    # A browser page may POST to a local stackd without asking first only with text/plain,
    # form or multipart bodies (or none declared): requiring a JSON type makes such a request
    # fail before it does anything, as CORS intends. Every client of the API sends JSON.
    declared = request.headers.get("Content-Type", "")
    mime = declared.partition(";")[0].strip().lower()
    if mime == _JSON or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise _refused(request, UnsupportedMediaType(
        f"{request.method} {request.path} takes a JSON body: send it with 'Content-Type: application/json' "
        f"(got {declared[:64]!r})" if declared else
        f"{request.method} {request.path} takes a JSON body: send it with 'Content-Type: application/json' "
        "(the request had no Content-Type)"
    ))


def _too_deep(where: str, loc: str, limit: int) -> BadRequest:
    return BadRequest(
        f"{where} nests deeper than {limit} levels at {loc}; flatten it, or raise server.max_json_depth",
        [FieldError(loc, f"nested deeper than {limit} levels")],
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, checked: declared JSON, within size and depth limits."""
    _check_content_type(request)
    raw = await _read_body(request)
    if not raw:
        raise BadRequest("the request needs a JSON object body", [FieldError("$", "empty body")])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         [FieldError("$", "not valid JSON")]) from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", [FieldError("$", "expected an object")])
    # orjson reads far deeper than it writes: a body accepted deeper than it can be written
    # back would break every later answer that includes it (a list of models, of completions).
    limit = request.app[MAX_JSON_DEPTH]
    if may_nest_deeper(raw, limit):
        loc = deeper_than(data, limit)
        if loc is not None:
            raise _too_deep("the body", loc, limit)
    return data


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        # Requests and upstream answers are held under orjson's depth limit where they come in,
        # so this is an answer put together from something that came past those checks.
        raise UpstreamBadResponse(f"the answer could not be written as JSON ({exc}); "
                                  "an upstream or a stored record holds a value nested too deeply") from None
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def provider_data(request: web.Request) -> dict[str, Any]:
    """The decoded ``X-LlamaStack-Provider-Data`` header of this request (never logged)."""
    raw = request.headers.get("X-LlamaStack-Provider-Data")
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the X-LlamaStack-Provider-Data header must be a JSON object",
                         [FieldError("$.headers.X-LlamaStack-Provider-Data", "not valid JSON")]) from None
    if not isinstance(data, dict):
        raise BadRequest("the X-LlamaStack-Provider-Data header must be a JSON object",
                         [FieldError("$.headers.X-LlamaStack-Provider-Data", "expected an object")])
    limit = request.app[MAX_JSON_DEPTH]
    loc = deeper_than(data, limit)
    if loc is not None:
        raise _too_deep("the X-LlamaStack-Provider-Data header", _PD + loc[1:], limit)
    bad = _control_characters(data, _PD)
    if bad:
        # Providers put these values in upstream headers (a caller's API key): CR/LF there is
        # header injection, and aiohttp refuses them with an exception that would be a 500.
        raise BadRequest("X-LlamaStack-Provider-Data values must not contain control characters "
                         "(CR, LF, NUL, tab...); remove them from the values named in errors",
                         [FieldError(loc, "contains a control character") for loc in bad[:10]])
    return data


_PD = "$.headers.X-LlamaStack-Provider-Data"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _control_characters(value: Any, loc: str) -> list[str]:
    """The places in ``value`` of strings (keys included) holding a control character."""
    if isinstance(value, str):
        return [loc] if _CONTROL.search(value) else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key[:64]}"
            if _CONTROL.search(key):
                found.append(where)
            found += _control_characters(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _control_characters(item, f"{loc}[{index}]")
    return found


def context(request: web.Request) -> CallContext:
    """What a provider call may know of this request: the caller, its provider data, its id."""
    return CallContext(caller=request[CALLER], provider_data=provider_data(request), request_id=request_id(request))


# What a client may choose as its request id: short, and nothing that could break a log line
# or a header (no spaces, quotes, control characters).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


class _Ids:
    """New request ids: a random 6-byte prefix per process, then a 6-byte count from a random
    start (24 hex digits, as unique as random ones without a system call per request). A forked
    worker draws its own prefix."""

    def __init__(self) -> None:
        self.draw()
        if hasattr(os, "register_at_fork"):  # POSIX only; elsewhere there are no forked workers
            os.register_at_fork(after_in_child=self.draw)

    def draw(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count(int.from_bytes(os.urandom(4), "big") << 16)

    def new(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFF:012x}"


_ids = _Ids()


def request_id(request: web.Request) -> str:
    """The request's ``X-Request-ID``: the client's when it is a sane token, else a new one."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        sent = request.headers.get("X-Request-ID", "")
        rid = sent if _REQUEST_ID.fullmatch(sent) else _ids.new()
        request[REQUEST_ID] = rid
    return rid


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer carries the id (JSON, streams and errors alike)."""
    response.headers["X-Request-ID"] = request_id(request)
