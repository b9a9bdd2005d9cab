"""Log lines: JSON (one object a line) for collectors, text for a person at a terminal.

Every line made while a request is served carries its request id: a filter on the handler
reads it from :data:`stackd.observe.current`, so no call site passes it. Access lines
(logger ``stackd.access``) and auth decisions (``stackd.audit``) carry their fields in
``record.fields``; in JSON they are keys of the object, in text ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import orjson

from stackd.observe import current

__all__ = ["FORMATS", "JsonFormatter", "RequestIdFilter", "TextFormatter", "configure", "resolve_format"]

FORMATS = ("auto", "json", "text")


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` from the request being served (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            obs = current.get()
            record.request_id = obs.request_id if obs is not None else None
        return True


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...fields, "exception"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``2026-12-02T15:40:00.123Z INFO stackd.server [request id] message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        line = f"{_utc(record.created)} {record.levelname} {record.name}{f' [{rid}]' if rid else ''}: " \
               f"{record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            line += "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """``auto``: text on a terminal, JSON otherwise (a collector, a file, a pipe)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str = "INFO", fmt: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """One handler on the root logger, replacing any: stderr, the chosen format, request ids."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, stream) == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by stackd.access (stackd.server.access).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
