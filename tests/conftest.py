"""Shared fixtures of the end-to-end tests: run configs around the echo test plugin, the real
aiohttp app on a real socket, and the real ``stackd serve`` process on a free port.

Helpers are handed out as fixtures (not imported) because pytest runs in importlib mode.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stackd.loading import LoadedConfig, load_config, parse_config
from stackd.server import create_app
from stackd.testing.stores import PgServer, RedisServer, ServerUnavailable, start_postgres, start_redis

__all__: list[str] = []

T = TypeVar("T")

STACKD = str(Path(sys.executable).with_name("stackd"))
SECRET = "sk-echo-very-secret-4711"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_yaml(
    state: Path,
    *,
    providers: str | None = None,
    models: str | None = None,
    server: str = "",
    apis: str = "[inference]",
    extra: str = "",
) -> str:
    """A run config serving the echo plugin, with its stores under ``state``."""
    if providers is None:
        providers = f"""\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config:
      api_key: {SECRET}
      models: [echo-1, echo-2, meta-llama/Llama-3.2-3B, echo-embed]
"""
    if models is None:
        models = """\
- model_id: echo-1
- model_id: meta-llama/Llama-3.2-3B
- model_id: echo-embed
  model_type: embedding
  metadata: {embedding_dimension: 8}
"""
    return (
        f"version: 2\nimage_name: e2e\napis: {apis}\nproviders:\n{providers}"
        f"metadata_store: {{type: sqlite, db_path: {state / 'registry.db'}}}\n"
        f"inference_store: {{type: sqlite, db_path: {state / 'inference_store.db'}}}\n"
        f"models:\n{models}"
        + (f"server:\n{server}" if server else "")
        + extra
    )


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(text=None, name="run.yaml", **echo_yaml_kwargs)`` -> path of the file."""

    def write(text: str | None = None, name: str = "run.yaml", **kwargs: Any) -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else echo_yaml(tmp_path, **kwargs), encoding="utf-8")
        return path

    return write


@pytest.fixture
def echo_config(write_config: Callable[..., Path]) -> Path:
    return write_config()


ServeApp = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """``await serve_app(path_or_loaded)``: the real app on 127.0.0.1:<free port>; closed at teardown.

    Servers are started and closed by the test (not through pytest-aiohttp's fixtures) so a
    test can stop one app and start another on the same stores, as a restart does.
    """
    servers: list[TestServer] = []

    async def start(config: Path | LoadedConfig) -> TestServer:
        loaded = config if isinstance(config, LoadedConfig) else load_config(config)
        server = TestServer(create_app(loaded), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def client(serve_app: ServeApp, echo_config: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An aiohttp client of the real app serving :func:`echo_config`."""
    server = await serve_app(echo_config)
    async with TestClient(server) as c:
        yield c


class StackdProcess:
    """A real ``stackd serve`` process. Its stdout and stderr are collected by reader threads."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path, program: str = STACKD) -> None:
        self.proc = subprocess.Popen(
            [program, *args],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.url: str | None = None

    def _pump(self, stream: Any, sink: list[str], announce: bool) -> None:
        for line in stream:
            sink.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def wait_serving(self, timeout: float = 20.0) -> str:
        """The URL of the announcement line; fails with the process's output if it never comes."""
        line = self.wait_line(lambda text: " serving " in text and " on " in text, timeout)
        self.url = line.rsplit(" on ", 1)[1].strip()
        return self.url

    def wait_line(self, wanted: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The first stdout line ``wanted`` accepts; fails with the process's output if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            if wanted(line):
                return line
        raise AssertionError(f"{self.proc.args[0]} did not start (rc={self.proc.poll()}):\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._finish()
            raise AssertionError(f"stackd did not stop on signal {sig}:\n{self.output()}") from None
        self._finish()
        return rc

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._finish()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self) -> None:
        """Drain the readers and close the pipes (an open pipe is a ResourceWarning, an error here)."""
        for t in self._threads:
            t.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The parent environment minus anything stackd reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKD_")}
    env["STACKD_HOME"] = str(tmp_path / "stackd-home")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def stackd_serve(tmp_path: Path) -> Iterator[Callable[..., StackdProcess]]:
    """``stackd_serve(*args, env={...})`` starts ``stackd serve``; every process is stopped at teardown."""
    procs: list[StackdProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> StackdProcess:
        p = StackdProcess(["serve", *args], cli_env(tmp_path, **dict(env or {})), tmp_path)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli("validate", path, env={...})``: the real ``stackd`` command, output captured."""

    def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STACKD, *args],
            env=cli_env(tmp_path, **dict(env or {})),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def port() -> Callable[[], int]:
    """A function giving a port that was free a moment ago."""
    return free_port


@pytest.fixture
def secret() -> str:
    """The api_key of the echo provider in :func:`echo_yaml` configs."""
    return SECRET


@pytest.fixture
def yaml_for(tmp_path: Path) -> Callable[..., str]:
    """``yaml_for(**echo_yaml_kwargs)``: the text of an echo run config with stores under tmp_path."""
    return lambda **kwargs: echo_yaml(tmp_path, **kwargs)


def vllm_yaml(url: str, state: Path, *, timeout: float = 5.0, server: str = "") -> str:
    """A run config of remote::vllm in front of ``url`` (a FakeOpenAI serving ``fake-model``):
    ``chat`` (llm) and ``embed`` (embedding, 8 dimensions), stores under ``state``."""
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{url}/v1", timeout: {timeout}}}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_model_id: fake-model
- model_id: embed
  provider_model_id: fake-model
  model_type: embedding
  metadata: {{embedding_dimension: 8}}
""" + (f"server:\n{server}" if server else "")


@pytest.fixture
def vllm_file(tmp_path: Path) -> Callable[..., Path]:
    """``vllm_file(url, server="  key: value\\n")``: :func:`vllm_yaml` written to a file, for ``stackd serve``."""

    def write(url: str, **kw: Any) -> Path:
        path = tmp_path / "vllm.yaml"
        path.write_text(vllm_yaml(url, tmp_path, **kw), encoding="utf-8")
        return path

    return write


@pytest.fixture
def vllm_config(tmp_path: Path) -> Callable[..., LoadedConfig]:
    """``vllm_config(url, timeout=..., server="  key: value\\n")``: :func:`vllm_yaml`, loaded."""
    pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

    def build(url: str, **kw: Any) -> LoadedConfig:
        return parse_config(vllm_yaml(url, tmp_path, **kw), env={})

    return build


@pytest.fixture
async def live_app() -> AsyncIterator[Callable[[LoadedConfig], Awaitable[int]]]:
    """``port = await live_app(loaded)``: the app as ``stackd serve`` runs it (handler
    cancellation on) on 127.0.0.1, for tests that speak raw sockets or hang up; closed at teardown."""
    from stackd.server.runner import Limits, StackdRunner

    runners: list[web.AppRunner] = []

    async def start(loaded: LoadedConfig) -> int:
        runner = StackdRunner(create_app(loaded), Limits.from_config(loaded.run.server))
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


# ---- throwaway PostgreSQL and Redis servers -------------------------------------------------------
# stackd.testing.stores starts them. Under CI=true a server that cannot start fails the test
# (.ci/run installs the binaries); elsewhere the test is skipped with the install command.


def _started(start: Callable[[], T]) -> T:
    try:
        return start()
    except ServerUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{exc} (CI=true: tests of the shared stores must run)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the session (tests keep apart by table or namespace)."""
    server = _started(start_postgres)
    yield server
    server.remove()


@pytest.fixture
def postgres_server(pg_server: PgServer) -> PgServer:
    """The session's cluster, under the name of its store type."""
    return pg_server


@pytest.fixture
def own_postgres_server() -> Iterator[PgServer]:
    """A cluster of this test alone, which it may stop and start."""
    server = _started(start_postgres)
    yield server
    server.remove()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the session (tests keep apart by namespace)."""
    server = _started(start_redis)
    yield server
    server.remove()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test alone, which it may kill and start again."""
    server = _started(start_redis)
    yield server
    server.remove()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A plain client of the session's Redis, for what the stores do not show."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password,
                            decode_responses=True)
    yield client
    await client.aclose()


class FreshVenv:
    """A new virtual environment, as a user's machine would have it: nothing of this checkout in it until
    a test installs it (from built distributions), and a home of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
        self.bin = root / "venv" / "bin"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKD_", "VIRTUAL_ENV", "PYTHON"))}
        self.env |= {"STACKD_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
        self.procs: list[StackdProcess] = []

    def run(self, program: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``program`` (a command of the venv, or a path) with ``args``; its failure fails the test."""
        exe = str(self.bin / program) if (self.bin / program).exists() else program
        done = subprocess.run([exe, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)
        assert done.returncode == 0, f"{program} {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done

    def start(self, program: str, *args: str) -> StackdProcess:
        """A background process of the venv, stopped at teardown."""
        proc = StackdProcess(list(args), self.env, self.root, program=str(self.bin / program))
        self.procs.append(proc)
        return proc


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[FreshVenv]:
    venv = FreshVenv(tmp_path)
    yield venv
    for proc in venv.procs:
        proc.kill()
