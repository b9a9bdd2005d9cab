"""``server.workers: N``: N processes serve one port, under a supervisor that starts, restarts
and stops them (docs/deployment.md).

The supervisor is the process ``stackd serve`` started. It has loaded the config, bound the
port and locked the metadata store before it forks; a worker inherits all three, so a bad
config, a busy port or a locked store is reported once, by the supervisor, before any worker
exists. The first worker starts alone and reconciles the store; the others start when it is
ready and only read it. A worker's startup failure comes back over its socket pair and is
printed once; the server then stops with a non-zero status.

How the workers share the port (``STACKD_WORKER_SOCKETS``):

- ``reuseport`` (the default): each worker binds its own socket with ``SO_REUSEPORT``, and the
  kernel spreads new connections over them by a hash of the addresses, whatever each
  worker is doing. Long-lived keep-alive connections opened in a burst (a load balancer's
  pool, a benchmark's clients) end up evenly spread.
- ``shared``: the workers accept on the supervisor's one socket. Every idle worker is woken
  for each new connection and the first to run takes it, along with whatever else is
  queued: a burst of connections tends to land on one worker and stay there. A worker that
  dies loses nothing queued, though (with ``reuseport``, the connections waiting in its own
  queue are reset).

docs/benchmarks.md has the measurements behind the default.

Signals: the workers run in their own process group, so a terminal's Ctrl-C reaches only the
supervisor, which forwards SIGTERM/SIGINT to every worker (their graceful shutdown: grace,
then error frames on streams); a second signal is forwarded too (no more grace), and workers
still running a few seconds later are killed. A worker whose supervisor dies sees its socket
pair close and shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable

import attrs

from stackd.logs import label_worker

__all__ = ["WorkerLink", "Supervisor", "socket_mode", "watch_supervisor", "workers_unsupported"]

log = logging.getLogger("stackd.workers")

# A crashing worker is restarted after 0.5 s, then 1, 2 ... up to 30 s while it keeps crashing;
# one that served this long before it died starts the series again.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE_AFTER = 30.0
# After the second signal: the workers' own hurried end (streams' last frame, cancel) takes
# about 1.5 s; after this they are killed.
_HURRY_KILL_AFTER = 5.0
# After the first signal: the grace, plus this, before workers that still run are killed.
_STOP_KILL_AFTER = 15.0
_MAX_MESSAGE = 4000
EXIT_START = 1


def workers_unsupported() -> str | None:
    """Why ``server.workers`` > 1 cannot run here (None: it can)."""
    if sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        return (f"server.workers > 1 needs Linux (fork, and SO_REUSEPORT that spreads connections over "
                f"processes); this is {sys.platform}. Run one worker (server.workers: 1), or several "
                "`stackd serve` processes on different ports behind a load balancer (docs/deployment.md)")
    return None


def socket_mode() -> str:
    """``reuseport`` or ``shared``, from ``STACKD_WORKER_SOCKETS``; raises ValueError for another value."""
    mode = os.environ.get("STACKD_WORKER_SOCKETS", "reuseport") or "reuseport"
    if mode not in ("reuseport", "shared"):
        raise ValueError(f"STACKD_WORKER_SOCKETS must be 'reuseport' or 'shared', got {mode!r}")
    return mode


@attrs.define
class WorkerLink:
    """A worker's end of the socket pair to its supervisor."""

    index: int
    count: int
    sock: socket.socket

    def ready(self) -> None:
        self._send(b"ready")

    def failed(self, message: str) -> None:
        """Report a startup failure (the supervisor prints it, once for the whole server)."""
        self._send(b"failed " + message.encode("utf-8", "replace")[:_MAX_MESSAGE].replace(b"\n", b" "))

    def _send(self, line: bytes) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(line + b"\n")
        except OSError:
            pass  # the supervisor is gone; this worker stops when it sees the socket close


def watch_supervisor(link: WorkerLink, stop: asyncio.Event) -> None:
    """Set ``stop`` when the supervisor goes away (its end of the pair closes)."""
    loop = asyncio.get_running_loop()
    link.sock.setblocking(False)

    def readable() -> None:
        try:
            data = link.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(link.sock.fileno())
            if not stop.is_set():
                log.warning("the supervisor process is gone; shutting down")
                stop.set()

    loop.add_reader(link.sock.fileno(), readable)


RunWorker = Callable[[WorkerLink, bool], int]
"""``run(link, first)``: serve in this (forked) process until stopped; the exit status."""


@attrs.define
class _Worker:
    index: int
    pid: int
    link: socket.socket
    started: float
    ready: bool = False
    buffer: bytes = b""


@attrs.define
class Supervisor:
    """Starts ``count`` workers with ``run``, restarts those that die, stops them on a signal."""

    count: int
    run: RunWorker
    announce: Callable[[], None]
    shutdown_grace: float
    workers: dict[int, _Worker] = attrs.field(factory=dict)  # by pid
    _restarts: dict[int, float] = attrs.field(factory=dict)  # index -> when to start it again
    _crashes: dict[int, int] = attrs.field(factory=dict)  # index -> crashes in a row
    _announced: bool = False
    _stopping: bool = False
    _exit_code: int = 0
    _kill_at: float | None = None
    _signals: list[int] = attrs.field(factory=list)
    _wake: tuple[int, int] = (-1, -1)

    def serve(self) -> int:
        """Run the server; the exit status once every worker has exited."""
        wake_r, wake_w = self._wake = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # its byte on the wakeup pipe is what counts
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        try:
            self._start(0, first=True, selector=selector)
            while self.workers or self._restarts:
                timeout = self._next_timeout()
                for key, _ in selector.select(timeout):
                    if key.fd == wake_r:
                        _drain(wake_r)
                    else:
                        self._read(key.data, selector)
                self._handle_signals()
                self._reap(selector)
                self._due(selector)
            return self._exit_code
        finally:
            selector.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)

    # -- workers -------------------------------------------------------------------------------

    def _start(self, index: int, *, first: bool, selector: selectors.BaseSelector) -> None:
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker
            code = EXIT_START
            try:
                parent_end.close()
                for other in self.workers.values():
                    other.link.close()  # so a sibling's pair closes when the supervisor dies
                selector.close()
                signal.set_wakeup_fd(-1)
                for fd in self._wake:
                    os.close(fd)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the supervisor, which forwards it
                label_worker(index, os.getpid())
                code = self.run(WorkerLink(index, self.count, child_end), first)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                _flush()
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        worker = _Worker(index, pid, parent_end, time.monotonic())
        self.workers[pid] = worker
        selector.register(parent_end, selectors.EVENT_READ, worker)

    def _read(self, worker: _Worker, selector: selectors.BaseSelector) -> None:
        try:
            data = worker.link.recv(_MAX_MESSAGE + 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(worker.link)
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            if line == b"ready":
                self._ready(worker, selector)
            elif line.startswith(b"failed "):
                self._failed(worker, line[7:].decode("utf-8", "replace"))
        worker.buffer = worker.buffer[-_MAX_MESSAGE:]

    def _ready(self, worker: _Worker, selector: selectors.BaseSelector) -> None:
        worker.ready = True
        if self._stopping:
            return
        if not self._announced:
            if worker.index == 0 and len(self.workers) == 1:
                for index in range(1, self.count):  # the store is reconciled: the rest may start
                    self._start(index, first=False, selector=selector)
            if len(self.workers) == self.count and all(w.ready for w in self.workers.values()):
                self._announced = True
                self.announce()
        else:
            log.info("worker %d is serving again (pid %d)", worker.index, worker.pid)

    def _failed(self, worker: _Worker, message: str) -> None:
        if self._announced:
            log.error("worker %d (pid %d) could not start: %s", worker.index, worker.pid, message)
            return
        if not self._stopping:  # the first failure is the one to report; the rest follow from it
            print(f"stackd: could not start: {message}", file=sys.stderr, flush=True)
            self._stop(signal.SIGTERM, EXIT_START)

    def _reap(self, selector: selectors.BaseSelector) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if _registered(selector, worker.link):
                self._read(worker, selector)  # what it said before it exited comes first
            if _registered(selector, worker.link):
                selector.unregister(worker.link)
            worker.link.close()
            self._exited(worker, _describe(status))

    def _exited(self, worker: _Worker, how: str) -> None:
        from stackd import metrics  # multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set (stackd.cli)

        metrics.worker_exited(worker.pid)
        if self._stopping:
            return
        if not self._announced:
            print(f"stackd: could not start: worker {worker.index} {how} while starting", file=sys.stderr, flush=True)
            self._stop(signal.SIGTERM, EXIT_START)
            return
        ran = time.monotonic() - worker.started
        crashes = 0 if ran >= _STABLE_AFTER else self._crashes.get(worker.index, 0)
        delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** crashes)
        self._crashes[worker.index] = crashes + 1
        self._restarts[worker.index] = time.monotonic() + delay
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                    worker.index, worker.pid, how, ran, delay)

    def _due(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for index, at in list(self._restarts.items()):
            if at <= now and not self._stopping:
                del self._restarts[index]
                self._start(index, first=False, selector=selector)
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            for worker in self.workers.values():
                log.warning("worker %d (pid %d) did not stop in time; killing it", worker.index, worker.pid)
                _signal(worker.pid, signal.SIGKILL)

    def _next_timeout(self) -> float | None:
        deadlines = list(self._restarts.values())
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self._stopping:
                log.info("stopping %d worker(s) (up to %g s for running requests, server.shutdown_grace)",
                         len(self.workers), self.shutdown_grace)
                self._stop(sig, 0)
            else:
                log.warning("second signal: stopping %d worker(s) at once", len(self.workers))
                for worker in self.workers.values():
                    _signal(worker.pid, sig)
                self._kill_at = min(self._kill_at or float("inf"), time.monotonic() + _HURRY_KILL_AFTER)

    def _stop(self, sig: int, code: int) -> None:
        self._stopping = True
        self._exit_code = self._exit_code or code
        self._restarts.clear()
        for worker in self.workers.values():
            _signal(worker.pid, sig)
        self._kill_at = time.monotonic() + self.shutdown_grace + _STOP_KILL_AFTER


def _registered(selector: selectors.BaseSelector, sock: socket.socket) -> bool:
    try:
        selector.get_key(sock)
    except (KeyError, ValueError):  # ValueError: closed already
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited already; reaped next
        os.kill(pid, sig)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
