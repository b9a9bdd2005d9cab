"""``stackd.client``: an async aiohttp client for stackd's HTTP API (docs/client.md).

Importing it loads no server, config or provider code: only aiohttp, attrs, cattrs, orjson and
the response types of :mod:`stackd.apis.responses`.
"""

from stackd.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    FieldError,
    Forbidden,
    InternalServerError,
    InvalidResponse,
    NotFound,
    NotImplementedByServer,
    PayloadTooLarge,
    QuotaExceeded,
    ServiceUnavailable,
    StackClientError,
    Unauthorized,
    UpstreamError,
)
from stackd.client.retry import Retry
from stackd.client.stack_client import DEFAULT_TIMEOUT, StackClient, StackVersionWarning
from stackd.client.stream import Stream

__all__ = [
    "DEFAULT_TIMEOUT",
    "StackClient",
    "StackVersionWarning",
    "Retry",
    "Stream",
    # errors
    "StackClientError",
    "ConnectionFailed",
    "InvalidResponse",
    "ApiError",
    "BadRequest",
    "FieldError",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "QuotaExceeded",
    "ServiceUnavailable",
    "UpstreamError",
    "NotImplementedByServer",
    "InternalServerError",
]
