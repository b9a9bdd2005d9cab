"""The framed protocol between the provider and a model's worker process.

One frame is a 4-byte big-endian length and that many bytes of JSON (an object). The provider
writes to the worker's stdin; the worker answers on a private copy of its stdout (fd 1 itself
is pointed at stderr, so a stray ``printf`` inside llama.cpp can never corrupt a frame).

provider -> worker
  {"op": "run", "id": N, "kind": "chat"|"completion"|"embed", "kwargs": {...}}
  {"op": "cancel", "id": N}         stop job N at its next token, or drop it if it is queued
  EOF on stdin                      the provider is gone or closing: exit at once

worker -> provider
  {"ev": "ready", "info": {...}}    the first frame: loaded and self-checked
  {"ev": "load_error", "message"}   the first frame instead: a load failure with its fix
  {"ev": "start", "id"}             job N leaves the queue and starts running
  {"ev": "chunk", "id", "data"}     one streamed chunk, sent as soon as it is made
  {"ev": "result", "id", "data", "stats"}   the answer of a non-streamed job
  {"ev": "end", "id", "stats"}      a stream ended (ran out, stopped or cancelled)
  {"ev": "error", "id", "type", "message", "errors"}   a job failed; the worker goes on

The worker's configuration is not a frame: it comes in the environment variable
``STACKD_LLAMA_CPP_WORKER`` (JSON), so the first frame on the wire is always the worker's.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import orjson

__all__ = ["CONFIG_ENV", "MAX_FRAME", "ProtocolError", "encode", "read_frame", "read_frame_fd"]

CONFIG_ENV = "STACKD_LLAMA_CPP_WORKER"
# A frame holds one request or one answer; 64 MiB bounds a corrupt length, not a real message
# (a 2048-token prompt or 640-dimension embeddings of many inputs are far below it).
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The other side sent something that is not a frame."""


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    message = orjson.loads(body)
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    return message


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream (the worker exited)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame header") from exc
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        return _decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            if chunks:
                raise ProtocolError("stream ended inside a frame")
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame_fd(fd: int) -> dict[str, Any] | None:
    """Blocking read of the next frame from ``fd`` (the worker's side); None at end of stream."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    body = _read_exactly(fd, size)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return _decode(body)
