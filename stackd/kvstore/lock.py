"""One live server per SQLite metadata store: an advisory lock on a file beside it.

A server reconciles the store with its config at start (config models removed from the file
are unregistered), so a second server on the same store would rewrite what the first one
serves. ``flock`` is held for the life of the stack and released by the kernel when the
process dies, so a crashed server never leaves a stale lock behind.

The workers of one server (``server.workers``) are one server: their supervisor takes the
lock before it forks them, they inherit its descriptor (a flock belongs to the open file, so
it stays held while any of them lives), the first worker reconciles and the others only read
(:class:`StoreClaim`). An unrelated server on the same file is still refused.

Stores shared on purpose by several replicas (Redis, PostgreSQL: issue #12) cannot use a
file lock; they will reconcile under a lease kept in the store itself (docs/deployment.md),
which is why :func:`lock_store` returns ``None`` for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from pathlib import Path

import attrs

from stackd.config.stores import SqliteStoreConfig, StoreConfig
from stackd.db.sqlite import store_failed
from stackd.errors import UpstreamUnavailable

__all__ = ["StoreClaim", "StoreInUse", "StoreLock", "lock_store", "lock_store_now"]


class StoreInUse(UpstreamUnavailable):
    """Another live process serves from this store."""


class StoreLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"StoreLock({str(self.path)!r})"

    async def release(self) -> None:
        await asyncio.to_thread(self.release_now)

    def release_now(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock (once no forked worker holds it)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
        return f"process {pid}"
    return "another process"


def _acquire(db_path: Path) -> StoreLock:
    db_path = db_path.expanduser().absolute()
    path = db_path.with_name(db_path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise StoreInUse(
            f"the metadata store {str(db_path)!r} is in use by {holder} (lock file {str(path)!r}); "
            "two servers on one SQLite store would undo each other's models. Stop the other server, "
            "or give this one its own state: another STACKD_HOME, another image_name, or another "
            "metadata_store.db_path"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the pid only improves the other server's message; the lock is what matters
    return StoreLock(path, fd)


def lock_store_now(config: StoreConfig) -> StoreLock | None:
    """The lock of a SQLite store (raises :class:`StoreInUse` when another process holds it).

    Blocking (a few system calls): for a supervisor before it has an event loop."""
    if not isinstance(config, SqliteStoreConfig):
        return None
    try:
        return _acquire(config.db_path)
    except OSError as exc:
        raise store_failed(config.db_path, exc, "cannot be locked") from exc


async def lock_store(config: StoreConfig) -> StoreLock | None:
    """:func:`lock_store_now` off the event loop."""
    return await asyncio.to_thread(lock_store_now, config)


@attrs.frozen
class StoreClaim:
    """What one process of a server does with the metadata store at start.

    A lone server locks the store and reconciles it with its config. A worker of a supervised
    server (``server.workers`` > 1) finds the lock held for it by its supervisor; only the
    first worker reconciles (once per start of the server, before the others are forked), so
    N workers do not rewrite the same records N times, and a restarted worker never undoes
    what the API registered meanwhile.
    """

    lock: bool = True
    reconcile: bool = True

    @classmethod
    def worker(cls, *, first: bool) -> StoreClaim:
        return cls(lock=False, reconcile=first)
