"""The one error shape of stackd.

Every failure that reaches a client is a :class:`StackdError`. The HTTP layer turns it into
``{"error": {"message": ..., "type": ...}}`` with the class's status; a 400 also carries
``"errors": [{"loc": "$.path", "msg": ...}]``. Providers raise these too, so an upstream
failure maps to the same statuses whichever plugin met it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "FieldError",
    "Forbidden",
    "MisdirectedRequest",
    "MethodNotAllowed",
    "NotFound",
    "NotImplementedByProvider",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RequestTimeout",
    "StackdError",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamBadResponse",
    "UpstreamClientError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "quote_id",
]

# Ids are quoted in messages this long at most: a client-chosen id of megabytes must not come
# back as a response (or a log line) of megabytes.
_QUOTED_ID_CHARS = 64


def quote_id(identifier: str) -> str:
    """``identifier`` as an error message quotes it: repr, cut to its first 64 characters."""
    if len(identifier) <= _QUOTED_ID_CHARS:
        return repr(identifier)
    return repr(identifier[:_QUOTED_ID_CHARS]) + f"… ({len(identifier)} characters)"


class FieldError(tuple[str, str]):
    """One problem at one place: ``(loc, msg)`` with ``loc`` a ``$.path``."""

    __slots__ = ()

    def __new__(cls, loc: str, msg: str) -> FieldError:
        return super().__new__(cls, (loc, msg))

    @property
    def loc(self) -> str:
        return self[0]

    @property
    def msg(self) -> str:
        return self[1]

    def __str__(self) -> str:
        return f"{self.msg} @ {self.loc}"


class StackdError(Exception):
    """Base of every error a client may see."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type}}


class BadRequest(StackdError):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        errors: Sequence[FieldError] = (),
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.errors = list(errors)

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["errors"] = [{"loc": e.loc, "msg": e.msg} for e in self.errors]
        return body


class Unauthorized(StackdError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str = "Authentication required", *, reason: str = "invalid", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")
        self.reason = reason
        """Why, as the auth-failure metric counts it: ``missing``, ``malformed`` or ``invalid`` (a bounded label)."""


class Forbidden(StackdError):
    status = 403
    type = "permission_error"


class NotFound(StackdError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(StackdError):
    status = 405
    type = "method_not_allowed"


class MisdirectedRequest(StackdError):
    status = 421
    type = "misdirected_request"


class RequestTimeout(StackdError):
    """The client did not send its request (headers or body) within the server's time limit."""

    status = 408
    type = "request_timeout"


class Conflict(StackdError):
    status = 409
    type = "conflict_error"


class PayloadTooLarge(StackdError):
    status = 413
    type = "request_too_large"


class UnsupportedMediaType(StackdError):
    status = 415
    type = "unsupported_media_type"


class QuotaExceeded(StackdError):
    status = 429
    type = "rate_limit_error"


class NotImplementedByProvider(StackdError):
    status = 501
    type = "not_implemented"


class UpstreamBadResponse(StackdError):
    """The upstream answered something stackd cannot use (502)."""

    status = 502
    type = "upstream_error"


class UpstreamUnavailable(StackdError):
    """The upstream cannot be reached, or the stack is not ready (503)."""

    status = 503
    type = "service_unavailable"


class UpstreamTimeout(StackdError):
    status = 504
    type = "timeout_error"


class UpstreamClientError(StackdError):
    """The upstream refused the request with a 4xx: passed on with its status and message."""

    type = "upstream_client_error"

    def __init__(self, status: int, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status  # type: ignore[misc]

