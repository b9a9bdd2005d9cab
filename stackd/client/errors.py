"""What :class:`stackd.client.StackClient` raises: one base class, one subclass per kind of failure.

An HTTP error answer becomes the class of its status (a status without a class of its own, the
base :class:`ApiError`); an error frame in the middle of a stream becomes the class of its
``type`` (the ``type`` strings are those of :mod:`stackd.errors`, the server's side). Messages
are the server's own, which never hold a token; the client adds none.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from multidict import CIMultiDict

from stackd import errors as server_errors
from stackd.errors import FieldError

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "FieldError",
    "Forbidden",
    "InternalServerError",
    "InvalidResponse",
    "NotFound",
    "NotImplementedByServer",
    "PayloadTooLarge",
    "QuotaExceeded",
    "ServiceUnavailable",
    "StackClientError",
    "Unauthorized",
    "UpstreamError",
    "error_for_status",
    "error_for_frame",
    "parse_retry_after",
]

# An error body is read this far at most: its message is a line, not a document.
MAX_ERROR_BODY = 64 * 1024
# Messages are shown this long at most: a misbehaving server cannot fill a log with one.
_MAX_MESSAGE = 2000


class StackClientError(Exception):
    """Base of everything the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(StackClientError):
    """The server could not be reached, or the connection broke or timed out before an answer."""


class InvalidResponse(StackClientError):
    """The server answered something that is not what the route documents (not JSON, too large,
    a field of the wrong type): a server of another kind, or a proxy's error page."""


class ApiError(StackClientError):
    """The server answered with an error: ``status`` (None for an error frame in a stream), the
    server's ``message`` and ``type``, the response ``headers`` and its ``X-Request-ID``."""

    status: int | None = None
    statuses: ClassVar[tuple[int, ...]] = ()
    types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.body = body
        self.request_id: str | None = self.headers.get("X-Request-ID")

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "error in stream"
        return f"{where}: {self.message}"


class BadRequest(ApiError):
    """400: the request was refused as invalid; ``errors`` lists each problem as ``(loc, msg)``."""

    statuses = (400,)
    types = (server_errors.BadRequest.type,)

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        raw = self.body.get("errors") if isinstance(self.body, dict) else None
        self.errors: list[FieldError] = [
            FieldError(str(e.get("loc", "$")), str(e.get("msg", "")))
            for e in (raw if isinstance(raw, list) else [])[:100]
            if isinstance(e, dict)
        ]


class Unauthorized(ApiError):
    """401: no token, or one the server does not accept."""

    statuses = (401,)
    types = (server_errors.Unauthorized.type,)


class Forbidden(ApiError):
    """403: authenticated, but not allowed to do this."""

    statuses = (403,)
    types = (server_errors.Forbidden.type,)


class NotFound(ApiError):
    """404: no such route, model, shield, provider or stored completion (or one the caller may not see)."""

    statuses = (404,)
    types = (server_errors.NotFound.type,)


class Conflict(ApiError):
    """409: the identifier exists with another provider."""

    statuses = (409,)
    types = (server_errors.Conflict.type,)


class PayloadTooLarge(ApiError):
    """413: the request body is over the server's ``server.max_body_bytes``."""

    statuses = (413,)
    types = (server_errors.PayloadTooLarge.type,)


class _RetryAfter(ApiError):
    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after: float | None = parse_retry_after(self.headers.get("Retry-After"))
        """Seconds the server asks to wait before retrying (None if it did not say)."""


class QuotaExceeded(_RetryAfter):
    """429: the caller's quota is used up. ``retry_after`` is when it resets; ``limit``,
    ``remaining`` and ``reset`` are the ``X-RateLimit-*`` headers (None when absent)."""

    statuses = (429,)
    types = (server_errors.QuotaExceeded.type,)

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = _int_header(self.headers, "X-RateLimit-Limit")
        self.remaining = _int_header(self.headers, "X-RateLimit-Remaining")
        self.reset = _int_header(self.headers, "X-RateLimit-Reset")


class ServiceUnavailable(_RetryAfter):
    """503: the upstream is down, a provider is still loading (with ``retry_after``), the server
    is shutting down, or a store it needs failed."""

    statuses = (503,)
    types = (server_errors.UpstreamUnavailable.type,)


class UpstreamError(ApiError):
    """502 or 504: the model server behind stackd answered badly or too late."""

    statuses = (502, 504)
    types = (server_errors.UpstreamBadResponse.type, server_errors.UpstreamTimeout.type)


class NotImplementedByServer(ApiError):
    """501: this server has no provider for the call (or the API is not served)."""

    statuses = (501,)
    types = (server_errors.NotImplementedByProvider.type,)


class InternalServerError(ApiError):
    """500: a bug in the server; its log has the details (find them by ``request_id``)."""

    statuses = (500,)
    types = (server_errors.StackdError.type,)


_CLASSES: tuple[type[ApiError], ...] = (
    BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, QuotaExceeded,
    ServiceUnavailable, UpstreamError, NotImplementedByServer, InternalServerError,
)
_BY_STATUS = {status: cls for cls in _CLASSES for status in cls.statuses}
_BY_TYPE = {t: cls for cls in _CLASSES for t in cls.types}


def _message_of(body: Any, fallback: str) -> tuple[str, str | None]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return error["message"][:_MAX_MESSAGE], kind if isinstance(kind, str) else None
    if isinstance(error, str):  # some proxies answer {"error": "..."}
        return error[:_MAX_MESSAGE], None
    return fallback, None


def error_for_status(status: int, headers: Mapping[str, str], body: Any, reason: str = "") -> ApiError:
    """The exception for an error answer; ``body`` is its parsed JSON (None when it had none)."""
    message, kind = _message_of(body, f"{reason or 'error'} (the answer carried no stackd error body)")
    cls = _BY_STATUS.get(status, ApiError)
    return cls(message, status=status, type=kind, headers=headers, body=body)


def error_for_frame(frame: Mapping[str, Any], headers: Mapping[str, str]) -> ApiError:
    """The exception for a stream's ``{"error": {...}}`` frame, by its ``type``."""
    message, kind = _message_of(frame, "the stream ended with an error")
    cls = _BY_TYPE.get(kind or "", ApiError)
    return cls(message, status=None, type=kind, headers=headers, body=dict(frame))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, math.ceil(seconds)) if math.isfinite(seconds) else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if value.isdigit() and len(value) <= 18 else None
