"""The provider's side of one worker process: start it, send it jobs, route its answers.

Everything here runs on the event loop and never waits on the worker: frames are read by one
reader task per worker, and each request waits only on its own future or queue. When the
worker dies, every request it was serving is failed at once with :class:`WorkerDied`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import orjson

from stackd_provider_llama_cpp.config import ModelConfig
from stackd_provider_llama_cpp.protocol import CONFIG_ENV, ProtocolError, encode, read_frame

__all__ = ["ChunkStream", "JobFailed", "LoadFailed", "Usage", "WorkerDied", "WorkerProcess", "exit_name"]

log = logging.getLogger("stackd.providers.llama_cpp")

# How long a worker has to exit after EOF on its stdin before it is killed.
_STOP_GRACE = 3.0


def exit_name(returncode: int) -> str:
    """``SIGSEGV`` for a worker killed by a signal, ``exit status N`` otherwise."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class WorkerDied(Exception):
    """The worker process ended while a request was waiting on it. ``started``: the request had
    begun running in it (else it was still queued there, and nothing of it was generated)."""

    def __init__(self, returncode: int, started: bool = True) -> None:
        super().__init__(exit_name(returncode))
        self.returncode = returncode
        self.started = started


class LoadFailed(Exception):
    """The worker could not load its model (missing file, not a GGUF...): retrying cannot help."""


class JobFailed(Exception):
    """A job's ``error`` frame: ``kind`` is ``bad_request``, ``value`` or ``internal``."""

    def __init__(self, kind: str, message: str, errors: list[list[str]]) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.errors = errors


@attrs.define
class Usage:
    """Token counts of one generation, as the worker counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def update(self, stats: dict[str, Any] | None) -> None:
        if stats:
            self.prompt_tokens = int(stats.get("prompt_tokens", 0))
            self.completion_tokens = int(stats.get("completion_tokens", 0))

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class _Call:
    """A non-streamed job: one ``result`` (or ``error``) frame."""

    def __init__(self) -> None:
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.started = False

    def feed(self, frame: dict[str, Any]) -> bool:
        if frame.get("ev") == "start":
            self.started = True
            return False
        if not self.future.done():
            self.future.set_result(frame)
        return True

    def died(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class WorkerProcess:
    """One running worker of one model."""

    def __init__(self, cfg: ModelConfig, proc: asyncio.subprocess.Process) -> None:
        self.cfg = cfg
        self.proc = proc
        self.pid = proc.pid
        self.started = time.monotonic()
        self.info: dict[str, Any] = {}
        self.returncode: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call | ChunkStream] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"llama-cpp {cfg.model_id}: frames")

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else exit_name(self.returncode)
        return f"<WorkerProcess {self.cfg.model_id} pid={self.pid} {state}>"

    @classmethod
    async def start(cls, cfg: ModelConfig, path: str, extra_env: dict[str, str] | None = None) -> WorkerProcess:
        setup = {"model": attrs.asdict(cfg, value_serializer=_jsonable), "path": path, "parent": os.getpid()}
        env = {**os.environ, **(extra_env or {}), CONFIG_ENV: orjson.dumps(setup).decode()}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stackd_provider_llama_cpp.runner",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        return cls(cfg, proc)

    async def wait_ready(self) -> dict[str, Any]:
        """The worker's ``info`` once it has loaded and self-checked its model.
        Raises :class:`LoadFailed` or :class:`WorkerDied`."""
        return await asyncio.shield(self._ready)

    @property
    def alive(self) -> bool:
        return self.returncode is None and not self.exited.done()

    @property
    def busy(self) -> int:
        """Jobs sent and not answered yet."""
        return len(self._pending)

    # -- frames ----------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (frame := await read_frame(self.proc.stdout)) is not None:
                self._route(frame)
        except (ProtocolError, orjson.JSONDecodeError, ConnectionError) as exc:
            log.error("llama-cpp: model %s: worker pid %d sent a bad frame (%s); stopping it",
                      self.cfg.model_id, self.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        returncode = await self.proc.wait()
        self.returncode = returncode
        died = WorkerDied(returncode)
        if not self._ready.done():
            self._ready.set_exception(died)
            self._ready.exception()  # retrieved: a worker nobody waits on must not warn
        pending, self._pending = list(self._pending.values()), {}
        for handler in pending:
            handler.died(died if handler.started else WorkerDied(returncode, started=False))
        self.exited.set_result(returncode)

    def _route(self, frame: dict[str, Any]) -> None:
        event = frame.get("ev")
        if event == "ready":
            self.info = dict(frame.get("info") or {})
            if not self._ready.done():
                self._ready.set_result(self.info)
            return
        if event == "load_error":
            if not self._ready.done():
                self._ready.set_exception(LoadFailed(str(frame.get("message"))))
            return
        job_id = frame.get("id")
        handler = self._pending.get(job_id) if isinstance(job_id, int) else None
        if handler is not None and handler.feed(frame):
            del self._pending[job_id]  # type: ignore[arg-type]

    def _send(self, message: dict[str, Any]) -> None:
        if not self.alive or self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        self.proc.stdin.write(encode(message))

    def cancel(self, job_id: int) -> None:
        if job_id in self._pending:
            self._send({"op": "cancel", "id": job_id})

    # -- jobs ------------------------------------------------------------------------------

    async def call(self, kind: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        """One non-streamed job. Cancelling the awaiting task cancels the job in the worker."""
        if not self.alive:  # died between the caller's check and now: the job was never sent
            raise WorkerDied(self.returncode if self.returncode is not None else -signal.SIGKILL, started=False)
        job_id = next(self._ids)
        call = _Call()
        self._pending[job_id] = call
        self._send({"op": "run", "id": job_id, "kind": kind, "kwargs": kwargs})
        try:
            frame = await call.future
        except asyncio.CancelledError:
            self.cancel(job_id)
            raise
        finally:
            if call.future.done():
                self._pending.pop(job_id, None)
        usage = Usage()
        usage.update(frame.get("stats"))
        if frame["ev"] == "error":
            raise JobFailed(str(frame.get("type")), str(frame.get("message")), list(frame.get("errors") or []))
        if frame["ev"] != "result":  # "end": a job cancelled before it started
            raise asyncio.CancelledError
        return frame["data"], usage

    async def stream(
        self,
        kind: str,
        kwargs: dict[str, Any],
        on_error: Callable[[BaseException], BaseException],
        tail: Callable[[dict[str, Any], Usage], dict[str, Any]] | None = None,
    ) -> ChunkStream:
        """Start a streamed job and return once its first chunk is there, so that a failure
        before it (prompt too long...) is raised here rather than inside the stream."""
        if not self.alive:  # died between the caller's check and now: the job was never sent
            raise WorkerDied(self.returncode if self.returncode is not None else -signal.SIGKILL, started=False)
        job_id = next(self._ids)
        stream = ChunkStream(self, job_id, on_error, tail)
        self._pending[job_id] = stream
        self._send({"op": "run", "id": job_id, "kind": kind, "kwargs": kwargs})
        try:
            await stream.prefetch()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def stop(self) -> None:
        """Close the worker's stdin (it exits at EOF), then kill it if it has not within a few s."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), _STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await asyncio.shield(self.exited)


def _jsonable(_inst: Any, _field: Any, value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


class ChunkStream(AsyncIterator[dict[str, Any]]):
    """The chunks of one streamed job. ``aclose()`` (the client went away) sends a cancel frame:
    the worker stops at its next token. ``stats`` holds the worker's counts once it ended."""

    def __init__(
        self,
        worker: WorkerProcess,
        job_id: int,
        on_error: Callable[[BaseException], BaseException],
        tail: Callable[[dict[str, Any], Usage], dict[str, Any]] | None,
    ) -> None:
        self._worker = worker
        self._id = job_id
        self._on_error = on_error
        self._tail = tail
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._first: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._done = False
        self._cancelled = False
        self.started = False
        self.stats = Usage()

    # Called by the worker's reader task.
    def feed(self, frame: dict[str, Any]) -> bool:
        event = frame.get("ev")
        if event == "start":
            self.started = True
            return False
        if event == "end":
            self.stats.update(frame.get("stats"))
        self._queue.put_nowait(frame)
        return event != "chunk"

    def died(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)

    async def prefetch(self) -> None:
        """Wait for the first chunk. A worker that died before the job started raises the bare
        :class:`WorkerDied` (``started`` False), so that the caller can run the job again."""
        with contextlib.suppress(StopAsyncIteration):
            self._first = await self._next(map_unstarted=False)

    async def _next(self, map_unstarted: bool = True) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self._done = True
            if not map_unstarted and isinstance(item, WorkerDied) and not item.started:
                raise item
            raise self._on_error(item) from item
        event = item.get("ev")
        if event == "chunk":
            self._last = item["data"]
            return item["data"]  # type: ignore[no-any-return]
        self._done = True
        if event == "error":
            failure = JobFailed(str(item.get("type")), str(item.get("message")), list(item.get("errors") or []))
            raise self._on_error(failure) from failure
        if self._tail is not None and self._last is not None and not item.get("cancelled"):
            return self._tail(self._last, self.stats)
        raise StopAsyncIteration

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._next()

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._cancelled = True
            self._worker.cancel(self._id)

    @property
    def cancelled(self) -> bool:
        return self._cancelled
