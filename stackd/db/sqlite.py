"""One aiosqlite connection to a SQLite file (its own thread, so the event loop never blocks on
disk), opened in WAL mode and reopened by the next use after a failure."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiosqlite

from stackd.errors import UpstreamUnavailable

__all__ = ["BUSY_TIMEOUT_MS", "SqliteDb", "store_failed"]

# A writer waits this long for another one (another process on a shared file) before failing.
BUSY_TIMEOUT_MS = 5000

# What the row (not the file) is at fault for: the caller maps these, retrying cannot help.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError)

Migrate = Callable[[aiosqlite.Connection], Awaitable[None]]


def _advice(exc: BaseException, shared: bool, setting: str) -> str:
    text = str(exc).lower()
    if "full" in text or getattr(exc, "errno", None) == 28:
        return "free space on its disk"
    if "locked" in text or "busy" in text:
        if shared:
            return (f"another process held its write lock longer than {BUSY_TIMEOUT_MS // 1000} s; "
                    "requests are refused until it is usable again")
        return f"another process holds the file locked; stop it or give this server its own {setting}"
    if "readonly" in text or "read-only" in text or "permission" in text:
        return f"make the file and its directory writable, or point {setting} (or STACKD_HOME) elsewhere"
    if "not a database" in text or "malformed" in text:
        return f"the file is not an intact SQLite database: move it away, or point {setting} elsewhere"
    return f"check the disk and the file, or point {setting} (or STACKD_HOME) elsewhere"


def store_failed(path: Path, exc: BaseException, doing: str = "cannot be used", *,
                 label: str = "the SQLite store", shared: bool = False,
                 setting: str = "db_path") -> UpstreamUnavailable:
    """503 naming the file: the store, not the request, is at fault, and a retry may succeed."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UpstreamUnavailable(f"{label} {str(path)!r} {doing}: {reason}; {_advice(exc, shared, setting)}")


def _transient(exc: sqlite3.Error) -> bool:
    """A lock held by another writer passes; anything else may have broken the connection."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _prepare(path: Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class SqliteDb:
    """Use :meth:`open` (a startup error names the file) and :meth:`use` for every statement.

    ``schema`` runs at each (re)open; ``migrate`` after it. ``label`` starts every message
    ("the SQLite store", "the quota store") and ``setting`` is the one to change in advice;
    ``shared`` says the file is shared on purpose by
    several servers, which changes the advice on a lock.
    """

    def __init__(self, path: Path, schema: Sequence[str], *, label: str = "the SQLite store",
                 shared: bool = False, setting: str = "db_path", migrate: Migrate | None = None) -> None:
        self.path = Path(path).expanduser()
        self.label = label
        self._schema = tuple(schema)
        self._shared = shared
        self._setting = setting
        self._migrate = migrate
        self._conn: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteDb({str(self.path)!r})"

    @classmethod
    async def open(cls, path: Path, schema: Sequence[str], *, label: str = "the SQLite store",
                   shared: bool = False, setting: str = "db_path", migrate: Migrate | None = None) -> SqliteDb:
        db = cls(path, schema, label=label, shared=shared, setting=setting, migrate=migrate)
        await db.connection()
        return db

    def failed(self, exc: BaseException, doing: str = "cannot be used") -> UpstreamUnavailable:
        return store_failed(self.path, exc, doing, label=self.label, shared=self._shared, setting=self._setting)

    async def connection(self) -> aiosqlite.Connection:
        """The open connection, or a new one when the last failed (the file may be back)."""
        if self._conn is not None:
            return self._conn
        async with self._opening:
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> aiosqlite.Connection:
        try:
            path = await asyncio.to_thread(_prepare, self.path)
        except OSError as exc:
            raise self.failed(exc, "cannot be created") from exc
        try:
            # isolation_level=None: transactions are explicit, so a batch is exactly one.
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise self.failed(exc, "cannot be opened") from exc
        try:
            # WAL lets readers and the one writer overlap, across processes too.
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # NORMAL: a commit in WAL mode does not wait for fsync; an OS crash may lose the
            # last commits, never corrupt the file.
            await conn.execute("PRAGMA synchronous=NORMAL")
            for statement in self._schema:
                await conn.execute(statement)
            if self._migrate is not None:
                await self._migrate(conn)
        except BaseException as exc:
            # aiosqlite's thread is not a daemon: left open, it keeps the process alive after a
            # failed start (and the process then ignores SIGTERM while it waits at exit).
            await _close_quietly(conn)
            if isinstance(exc, sqlite3.Error):
                raise self.failed(exc, "cannot be prepared") from exc
            raise
        return conn

    @contextlib.asynccontextmanager
    async def use(self, doing: str = "cannot be used") -> AsyncIterator[aiosqlite.Connection]:
        """The connection; a failure of the file becomes a 503 naming it, and a connection that
        may be broken is dropped so the next use reopens it (counting resumes without a restart)."""
        conn = await self.connection()
        try:
            yield conn
        except _ROW_ERRORS:
            raise  # the row or our SQL, not the file: the caller decides
        except sqlite3.Error as exc:
            if not _transient(exc) and self._conn is conn:
                self._conn = None
                await _close_quietly(conn)
            raise self.failed(exc, doing) from exc
        except ValueError as exc:
            if self._conn is conn:
                raise
            # Another use dropped this connection while the statement waited for it.
            raise self.failed(exc, doing) from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.close()
