"""Log lines: JSON (one object a line) for collectors, text for a person at a terminal.

Every line made while a request is served carries its request id: a filter on the handler
reads it from :data:`stackd.observe.current`, so no call site passes it. Access lines
(logger ``stackd.access``) and auth decisions (``stackd.audit``) carry their fields in
``record.fields``; in JSON they are keys of the object, in text ``key=value`` pairs.

Access lines are one per request, and :mod:`logging` spends about ten times what the rest of
the line costs (a record, the caller's frame, a flush per line). With JSON configured here,
they take a short cut (:func:`access_sink`): the same object, serialised once, and the lines
of one event-loop turn written together. Without :func:`configure` (stackd embedded, tests)
they go through :mod:`logging` like any other line.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import orjson

from stackd.observe import current

__all__ = ["FORMATS", "JsonFormatter", "RequestIdFilter", "TextFormatter", "access_sink", "configure",
           "label_worker", "resolve_format"]

FORMATS = ("auto", "json", "text")

# Under ``server.workers``: which worker wrote a line ({"worker": index, "pid": pid}); empty otherwise.
_worker: dict[str, int] = {}


def label_worker(index: int, pid: int) -> None:
    """Every line this process writes from now on names its worker and pid (after a fork)."""
    _worker.clear()
    _worker.update(worker=index, pid=pid)


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
        out.update(_worker)
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
        who = f" [worker {_worker['worker']} pid {_worker['pid']}]" if _worker else ""
        line = f"{_utc(record.created)} {record.levelname} {record.name}{who}{f' [{rid}]' if rid else ''}: " \
               f"{record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            line += "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _AccessSink:
    """JSON access lines straight to the handler's stream, written once per event-loop turn."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._second = -1
        self._stamp = b""
        atexit.register(self.flush)

    def __call__(self, request_id: str, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date part changes once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        head = b'{"time":"%s.%03dZ","level":"INFO","logger":"stackd.access","message":' % (
            self._stamp, int(now % 1 * 1000))
        body = orjson.dumps({"message": message, "request_id": request_id, **_worker, **fields})
        # body is '{"message":...}': its first 11 bytes are '{"message":', replaced by the head.
        self._pending.append(head + body[11:] + b"\n")
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: at once
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            buffer = getattr(self._stream, "buffer", None)
            if buffer is not None:
                self._stream.flush()  # what logging wrote before goes first
                buffer.write(data)
                buffer.flush()
            else:
                self._stream.write(data.decode())
                self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr: as logging.Handler.handleError would, drop the lines


_sink: _AccessSink | None = None


def access_sink() -> Callable[[str, str, dict[str, Any]], None] | None:
    """The short cut for JSON access lines, when :func:`configure` set one up."""
    return _sink


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """``auto``: text on a terminal, JSON otherwise (a collector, a file, a pipe)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str = "INFO", fmt: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """One handler on the root logger, replacing any: stderr, the chosen format, request ids."""
    global _sink
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    json = resolve_format(fmt, stream) == "json"
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    if _sink is not None:
        _sink.flush()
    _sink = _AccessSink(stream) if json else None
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by stackd.access (stackd.server.access).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
