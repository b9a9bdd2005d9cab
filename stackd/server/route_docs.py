"""What each route takes and answers, declared beside the route: :func:`documented`.

``GET /v1/openapi.json`` (:mod:`stackd.server.openapi`) is built from these declarations and
the app's route table, never by hand; a route without one fails tests/test_openapi.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs

__all__ = [
    "BODY_ERRORS",
    "CALL_ERRORS",
    "COMMON_ERRORS",
    "ID_ERRORS",
    "RouteDoc",
    "doc_of",
    "documented",
    "is_outside_api",
    "outside_api",
]

# Statuses any counted route may answer: auth on and no valid token (401), a route policy that
# denies (403), quota spent (429), the quota store or an identity provider down (503).
COMMON_ERRORS = frozenset({401, 403, 429, 503})
# A JSON body: bad fields (400), not sent in time (408), too large (413), not declared JSON (415).
BODY_ERRORS = frozenset({400, 408, 413, 415})
# An id in the path: malformed (400), unknown or hidden (404).
ID_ERRORS = frozenset({400, 404})
# A call to a provider: unknown model or shield (404), not implemented (501), the upstream's
# bad answer (502), down or loading (503), too slow (504).
CALL_ERRORS = frozenset({404, 501, 502, 503, 504})


@attrs.frozen
class RouteDoc:
    """One route's contract. Types are those :class:`stackd.schema.Schemas` describes."""

    summary: str
    answer: Any
    """The 200 body's type (``None``: the body is JSON ``null``)."""
    body: Any = None
    """The request body's type; ``None``: the route takes no body."""
    stream: Any = None
    """With ``"stream": true`` in the body the answer is ``text/event-stream`` of these events."""
    query: type | None = None
    """An attrs class whose fields are the query parameters."""
    errors: frozenset[int] = COMMON_ERRORS
    api: str | None = None
    """The provider API the route belongs to (for /v1/inspect/routes), if any."""
    tag: str = "stackd"


H = TypeVar("H", bound=Callable[..., Any])


def documented(summary: str, *, answer: Any, body: Any = None, stream: Any = None, query: type | None = None,
               errors: Iterable[int] = (), api: str | None = None, tag: str = "stackd",
               public: bool = False) -> Callable[[H], H]:
    """Attach the route's :class:`RouteDoc` to its handler. ``errors`` adds to the statuses every
    route may give (none of them for a ``public`` route, which is neither authenticated nor counted)."""
    base = frozenset() if public else COMMON_ERRORS
    extra = BODY_ERRORS if body is not None else frozenset()
    doc = RouteDoc(summary, answer, body, stream, query, base | extra | frozenset(errors), api, tag)

    def mark(handler: H) -> H:
        handler.stackd_doc = doc  # type: ignore[attr-defined]
        return handler

    return mark


def outside_api(why: str) -> Callable[[H], H]:
    """Mark a route that is not part of the API on purpose (``/metrics``: Prometheus' text format,
    at a path the config chooses), so the document leaves it out instead of failing the start."""

    def mark(handler: H) -> H:
        handler.stackd_outside_api = why  # type: ignore[attr-defined]
        return handler

    return mark


def is_outside_api(handler: Any) -> bool:
    return bool(getattr(handler, "stackd_outside_api", None))


def doc_of(handler: Any) -> RouteDoc | None:
    return getattr(handler, "stackd_doc", None)
