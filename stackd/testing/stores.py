"""Throwaway PostgreSQL and Redis servers for tests and benchmarks: started from the binaries
on this machine (Debian's ``postgresql`` and ``redis-server``) on a free port in a temp dir,
with a random password; :meth:`stop` kills one as a crash would, :meth:`start` brings it back
on the same port. A server that cannot start raises :class:`ServerUnavailable`."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from stackd.config.stores import PostgresStoreConfig, RedisStoreConfig
from stackd.convert import Secret

__all__ = ["PG_BIN", "REDIS_SERVER", "PgServer", "RedisServer", "ServerUnavailable", "start_postgres",
           "start_redis"]

def _pg_bin() -> Path:
    """``$STACKD_PG_BIN``, else the newest Debian cluster's binaries, else where ``initdb`` is on PATH."""
    if os.environ.get("STACKD_PG_BIN"):
        return Path(os.environ["STACKD_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
REDIS_SERVER = Path(os.environ.get("STACKD_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server")


class ServerUnavailable(RuntimeError):
    """The binaries are missing or the server did not start; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flow(fields: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


@attrs.frozen
class PgServer:
    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)
    db: str
    base: Path
    run_as: tuple[str, ...]

    def config(self, **kw: Any) -> PostgresStoreConfig:
        return PostgresStoreConfig(host=self.host, port=self.port, db=self.db, user=self.user,
                                   password=Secret(self.password), **kw)

    def yaml(self, **kw: str) -> str:
        """The store as a YAML flow mapping for a run config."""
        return _flow({"type": "postgres", "host": self.host, "port": str(self.port), "db": self.db,
                      "user": self.user, "password": self.password, **kw})

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def stop(self) -> None:
        """Stop as a crash would (immediate: no checkpoint, every connection cut)."""
        self._ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.base} -F"  # -F: no fsync, throwaway data
        done = self._ctl("-l", str(self.base / "log"), "-w", "-t", "30", "-o", options, "start")
        if done.returncode != 0:
            log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
            raise ServerUnavailable(f"pg_ctl start failed ({done.returncode}): {done.stderr}{done.stdout}\n{log}")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres() -> PgServer:
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        raise ServerUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {PG_BIN}: "
                                "apt-get install -y postgresql, or set STACKD_PG_BIN to their directory")
    run_as: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # initdb refuses to run as root; the Debian package provides the postgres user. runuser
        # lives in /usr/sbin, which the PATH of an unprivileged shell may lack.
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if runuser is None:
            raise ServerUnavailable("initdb cannot run as root and runuser (util-linux) was not found to run it "
                                    "as the postgres user: apt-get install -y util-linux, or run the tests as "
                                    "another user")
        run_as = (runuser, "-u", "postgres", "--")
    base = Path(tempfile.mkdtemp(prefix="stackd-pg-"))
    password = secrets.token_urlsafe(16)
    (base / "pw").write_text(password)
    if run_as:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pw", "postgres")
    server = PgServer("127.0.0.1", _free_port(), "stackd", password, "stackd_test", base, run_as)

    def run(*cmd: str) -> None:
        done = subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ServerUnavailable(f"{cmd[0]} failed ({done.returncode}): {done.stderr}{done.stdout}")

    try:
        run(str(PG_BIN / "initdb"), "-D", str(base / "data"), "-U", "stackd", f"--pwfile={base / 'pw'}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        server.start()
        run(str(PG_BIN / "createdb"), "-h", str(base), "-p", str(server.port), "-U", "stackd", "stackd_test")
    except (ServerUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        server.remove()
        raise ServerUnavailable(f"PostgreSQL could not start: {exc}") from exc
    return server


@attrs.define
class RedisServer:
    host: str
    port: int
    password: str = attrs.field(repr=False)
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    def config(self, **kw: Any) -> RedisStoreConfig:
        return RedisStoreConfig(host=self.host, port=self.port, password=Secret(self.password), **kw)

    def yaml(self, **kw: str) -> str:
        return _flow({"type": "redis", "host": self.host, "port": str(self.port), "password": self.password, **kw})

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while b"\n" not in reply.partition(b"\n")[2] and (chunk := s.recv(64)):
                    reply += chunk
                return b"+PONG" in reply
        except OSError:
            return False

    def _config_file(self) -> Path:
        """A config file with the password, readable by this user alone: on the command line
        (``--requirepass``) every user of the machine would see it in ``ps``."""
        path = self.base / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode applies to a new file only
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
        return path

    def start(self, timeout: float = 30.0) -> None:
        # No persistence: the data of a killed server is gone, as after a failover to an empty replica.
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), str(self._config_file()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.base), "--daemonize", "no",
             "--logfile", str(self.base / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._answers():
                return
            time.sleep(0.05)
        log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
        self.stop()
        raise ServerUnavailable(f"redis-server did not answer on port {self.port}:\n{log}")

    def stop(self) -> None:
        """Kill the server (SIGKILL: as a crash, nothing saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_redis() -> RedisServer:
    if not REDIS_SERVER.exists():
        raise ServerUnavailable(f"{REDIS_SERVER} not found (apt-get install -y redis-server)")
    server = RedisServer("127.0.0.1", _free_port(), secrets.token_urlsafe(16),
                         Path(tempfile.mkdtemp(prefix="stackd-redis-")))
    try:
        server.start()
    except (ServerUnavailable, OSError) as exc:
        shutil.rmtree(server.base, ignore_errors=True)
        raise ServerUnavailable(f"Redis could not start: {exc}") from exc
    return server
