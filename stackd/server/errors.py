"""Every error leaves the server in the one shape of :mod:`stackd.errors`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    LineTooLong,
    TransferEncodingError,
)

from stackd.errors import BadRequest, FieldError, MethodNotAllowed, NotFound, StackdError
from stackd.server.http import body_too_large, request_id

__all__ = ["error_middleware", "error_response", "http_error", "parser_error", "quiet_parser_errors"]

log = logging.getLogger("stackd.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: StackdError) -> web.Response:
    body = exc.body()
    if exc.status == 400 and not body.get("errors"):
        # A 400 raised without a field (by a provider, or passed on from an upstream) still
        # carries errors[].loc, as API.md §3 promises; the whole request is the place.
        body["errors"] = [{"loc": "$", "msg": exc.message}]
    return web.Response(
        status=exc.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=exc.headers,
    )


def http_error(status: int, kind: str, message: str) -> StackdError:
    err = StackdError(message)
    err.status = status  # type: ignore[misc]
    err.type = kind  # type: ignore[misc]
    return err


def parser_error(status: int, exc: BaseException | None) -> StackdError:
    """What to answer when aiohttp's parser refused a request (or its connection handler failed).

    The exception's own text quotes the offending bytes (a header value can be a token): only
    its class is used. Statuses per RFC 9110/9112.
    """
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        # The request target is the only line that starts with "/" (a header name cannot).
        if isinstance(line, (bytes, bytearray, str)) and line[:1] in (b"/", "/"):
            return http_error(414, "uri_too_long", "the request URL is too long; send long values in the body")
        return http_error(431, "request_header_fields_too_large",
                          "a request header is too long (raise server.max_header_bytes to allow more)")
    if isinstance(exc, ContentEncodingError):
        return http_error(415, "unsupported_media_type",
                          "the body's Content-Encoding is not supported or does not decode; "
                          "send it as gzip or deflate, or uncompressed without the header")
    if isinstance(exc, ContentLengthError):
        return BadRequest("the body is shorter than its Content-Length", [FieldError("$", "body cut short")])
    if isinstance(exc, TransferEncodingError):
        return BadRequest("the body's chunked framing is broken (a chunk size or chunk end is malformed)",
                          [FieldError("$", "malformed chunked body")])
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return http_error(431, "request_header_fields_too_large", "the request has too many headers")
    if isinstance(exc, BadHttpMessage) and "invalid `transfer-encoding`" in str(exc).lower():
        return http_error(501, "not_implemented",
                          "the request's Transfer-Encoding is not supported; use chunked or none")
    if isinstance(exc, HttpProcessingError) or status == 400:
        return BadRequest("the request is not valid HTTP/1.1 (request line, header or framing)",
                          [FieldError("$", "malformed HTTP request")])
    if status == 504:
        return http_error(504, "timeout_error", "the request timed out")
    return http_error(status, "http_error", "the request could not be handled")


def _from_http(exc: web.HTTPException, request: web.Request) -> StackdError:
    if exc.status == 404:
        return NotFound(f"no route {request.method} {request.path}; GET /v1/inspect/routes lists the routes")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        err: StackdError = MethodNotAllowed(f"{request.method} is not allowed on {request.path}"
                                            + (f"; use {allowed}" if allowed else ""))
        if allowed:
            err.headers["Allow"] = allowed
        return err
    if exc.status == 413:
        return body_too_large(request)
    return http_error(exc.status, "http_error", exc.reason or "error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StackdError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http(exc, request))
    except ConnectionError as exc:
        # The client went away (mid-upload, say): nothing can reach it, and it is not a server
        # error. A response is still returned, so aiohttp closes the connection quietly
        # instead of logging a traceback per departed client.
        log.debug("client connection lost on %s: %s", request.path, exc)
        return web.Response(status=499, reason="Client Closed Request")
    except Exception:
        log.exception("internal error on %s %s (request %s)", request.method, request.path, request_id(request))
        return error_response(StackdError("internal server error; the server log has the details"))


class _ParserErrorFilter(logging.Filter):
    """aiohttp logs a request its parser refused with the exception, whose text quotes up to 100
    bytes of the offending line: for an over-long header that is the header's value (a bearer
    token, provider data). The record keeps its level and says what failed, without the quote."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg}: %s (HTTP %s); request bytes not logged"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


_PARSER_FILTER = _ParserErrorFilter()


def quiet_parser_errors() -> None:
    """Install the filter on aiohttp's server logger (once; the logger is process-wide)."""
    logging.getLogger("aiohttp.server").addFilter(_PARSER_FILTER)
