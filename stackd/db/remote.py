"""What the stores on a database server (PostgreSQL, Redis) share: their messages, which name
the server (``user@host:port/db``, ``redis://host:port/db``) and never its password, and the
mapping of a driver's failures to a 503."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from stackd.errors import UpstreamUnavailable

__all__ = ["RemoteDb"]


class RemoteDb:
    """``errors``: what the driver raises when the server fails; ``passthrough``: the subset the
    caller maps itself (a row the server refused)."""

    errors: tuple[type[BaseException], ...] = ()
    passthrough: tuple[type[BaseException], ...] = ()

    def __init__(self, where: str, label: str) -> None:
        self.where = where
        self.label = label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    def failed(self, exc: BaseException, doing: str = "failed") -> UpstreamUnavailable:
        return UpstreamUnavailable(f"{self.label} {self.where} {doing}: {type(exc).__name__}: {exc}")

    @classmethod
    def cannot_connect(cls, label: str, where: str, exc: BaseException, check: str) -> UpstreamUnavailable:
        """The startup error: the server, the driver's reason, and what to check."""
        return UpstreamUnavailable(f"cannot connect to {label} {where}: {type(exc).__name__}: {exc}; check {check}")

    @contextlib.asynccontextmanager
    async def mapped(self, doing: str = "failed") -> AsyncIterator[None]:
        try:
            yield
        except self.passthrough:
            raise
        except self.errors as exc:
            raise self.failed(exc, doing) from exc
