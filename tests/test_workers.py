"""``server.workers: N`` (docs/deployment.md): real ``stackd serve`` processes, real HTTP.

Which worker answered is read from the kernel, not from the server: the server-side socket of
a client's connection (/proc/net/tcp) belongs to exactly one worker's descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from stackd.registry import CACHE_SECONDS
from stackd.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="server.workers > 1 runs on Linux only")

CHAT = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
# A loaded 2-core machine may be slow to answer the probe that sees the change.
SLACK = 2.0


# -- who answered -----------------------------------------------------------------------------

def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _socket_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, inode = parts[1], parts[2], parts[9]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    return inode
    return None


def worker_of(pids: set[int], server_port: int, client_port: int) -> int | None:
    """The worker holding the server side of the connection from ``client_port``."""
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def client_port(resp: aiohttp.ClientResponse) -> int:
    """The client's port of a response whose body is not read yet (a stream)."""
    assert resp.connection is not None and resp.connection.transport is not None
    return int(resp.connection.transport.get_extra_info("sockname")[1])


class Conn:
    """One HTTP/1.1 keep-alive connection, so every request on it reaches the same worker
    (aiohttp's pool hides which connection answered)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.server_port = int(port)
        self.port = 0
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.server_port)
            self.port = int(self._streams[1].get_extra_info("sockname")[1])
        reader, writer = self._streams
        body = orjson.dumps(json) if json is not None else b""
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        assert "chunked" not in headers.get("transfer-encoding", ""), "a JSON answer has a length"
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, orjson.loads(data) if data else None

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()


def wait_for_workers(parent: int, count: int, timeout: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children(parent)
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"expected {count} workers of {parent}, found {children(parent)}")


async def pinned_pair(url: str, parent: int, server_port: int) -> tuple[Conn, Conn, int, int]:
    """Two connections held by two different workers."""
    pids = children(parent)
    by_worker: dict[int, Conn] = {}
    spare: list[Conn] = []
    for _ in range(64):
        conn = Conn(url)
        await conn.request("GET", "/v1/health")
        pid = worker_of(pids, server_port, conn.port)
        assert pid is not None, "the server side of a live connection belongs to a worker"
        if pid in by_worker:
            spare.append(conn)
        else:
            by_worker[pid] = conn
        if len(by_worker) == 2:
            break
    for conn in spare:
        await conn.close()
    assert len(by_worker) == 2, "64 connections all reached one worker"
    (pid_a, a), (pid_b, b) = by_worker.items()
    return a, b, pid_a, pid_b


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A new connection per request: each is handed to a worker afresh."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- quota and balance ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reuseport", "shared"])
async def test_two_workers_admit_exactly_the_quota_and_both_answer(
    stackd_serve: Any, write_config: Callable[..., Path], tmp_path: Path, mode: str,
) -> None:
    """1,000 concurrent requests against limit 100 under workers: 2: exactly 100 pass, and both workers answer."""
    config = write_config(server=f"  port: 0\n  workers: 2\n  quota:\n    kvstore: {{type: sqlite, db_path: "
                                 f"{tmp_path / 'quota.db'}}}\n    anonymous_max_requests: 100\n")
    proc = stackd_serve(str(config), env={"STACKD_WORKER_SOCKETS": mode})
    url = await asyncio.to_thread(proc.wait_serving, 60)
    assert " with 2 workers on " in proc.output()
    pids = await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
    server_port = _port_of(url)
    conns = [Conn(url) for _ in range(200)]
    by_port: Counter[int] = Counter()

    async def five(conn: Conn) -> list[int]:
        statuses = []
        for _ in range(5):
            statuses.append((await conn.request("GET", "/v1/models"))[0])
            by_port[conn.port] += 1
        return statuses

    try:
        results = await asyncio.gather(*(five(c) for c in conns))
        served_by: Counter[int | None] = Counter()
        for client, count in by_port.items():  # the connections are still open
            served_by[worker_of(pids, server_port, client)] += count
    finally:
        for conn in conns:
            await conn.close()
    statuses = Counter(s for r in results for s in r)
    assert statuses == {200: 100, 429: 900}
    assert set(served_by) == pids, served_by  # every request reached one of the two, and each answered some
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


# -- coherence -----------------------------------------------------------------------------------

TWO_PROVIDERS = """\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {models: [echo-1, echo-2]}
  - provider_id: other
    provider_type: inline::echo
    config: {models: [echo-1, echo-2]}
"""


async def _until(probe: Callable[[], Any], want: Any, bound: float) -> float:
    """Seconds until ``probe()`` returns ``want``; fails after ``bound``."""
    began = time.monotonic()
    while True:
        got = await probe()
        if got == want:
            return time.monotonic() - began
        assert time.monotonic() - began < bound, (got, want)
        await asyncio.sleep(0.05)


async def test_a_registration_through_one_worker_is_served_by_the_other_within_the_bound(
    stackd_serve: Any, write_config: Callable[..., Path],
) -> None:
    config = write_config(providers=TWO_PROVIDERS, models="- model_id: echo-1\n  provider_id: echo\n",
                          server="  port: 0\n  workers: 2\n")
    proc = stackd_serve(str(config))
    url = await asyncio.to_thread(proc.wait_serving, 60)
    await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
    a, b, pid_a, pid_b = await pinned_pair(url, proc.proc.pid, _port_of(url))
    try:
        chat2 = CHAT | {"model": "echo-2"}
        assert (await b.request("GET", "/v1/models/echo-2"))[0] == 404
        # Registered through A: B serves it at once (a miss reads the store), in lists too.
        status, _ = await a.request("POST", "/v1/models", json={"model_id": "echo-2", "provider_id": "echo"})
        assert status == 200
        assert (await b.request("GET", "/v1/models/echo-2"))[0] == 200
        assert (await b.request("POST", "/v1/chat/completions", json=chat2))[0] == 200
        assert "echo-2" in {m["identifier"] for m in (await b.request("GET", "/v1/models"))[1]["data"]}

        # Removed through A while B holds it cached: lists at once, lookups within the cache time.
        assert (await b.request("GET", "/v1/models/echo-2"))[0] == 200
        removed = time.monotonic()
        assert (await a.request("DELETE", "/v1/models/echo-2"))[0] == 200
        assert "echo-2" not in {m["identifier"] for m in (await b.request("GET", "/v1/models"))[1]["data"]}

        async def chat_status() -> int:
            return (await b.request("POST", "/v1/chat/completions", json=chat2))[0]

        await _until(chat_status, 404, CACHE_SECONDS + SLACK)
        assert time.monotonic() - removed <= CACHE_SECONDS + SLACK

        # Writes decide on the store, not on a stale cache: B caches echo-2 on `echo`, A moves it
        # to `other`; B's register on `echo` is a conflict (not an update that undoes A's).
        assert (await a.request("POST", "/v1/models", json={"model_id": "echo-2", "provider_id": "echo"}))[0] == 200
        assert (await b.request("GET", "/v1/models/echo-2"))[1]["provider_id"] == "echo"
        assert (await a.request("DELETE", "/v1/models/echo-2"))[0] == 200
        assert (await a.request("POST", "/v1/models", json={"model_id": "echo-2", "provider_id": "other"}))[0] == 200
        status, body = await b.request("POST", "/v1/models", json={"model_id": "echo-2", "provider_id": "echo"})
        assert status == 409 and "'other'" in body["error"]["message"], body
        # and B's delete of a model A removed meanwhile is a 404, not a silent 204
        assert (await b.request("GET", "/v1/models/echo-2"))[0] == 200
        assert (await a.request("DELETE", "/v1/models/echo-2"))[0] == 200
        assert (await b.request("DELETE", "/v1/models/echo-2"))[0] == 404
    finally:
        await a.close()
        await b.close()
    assert pid_a != pid_b
    assert proc.stop() == 0


# -- failures and restarts -----------------------------------------------------------------------

async def _dead(proc: Any, pid: int) -> None:
    """Until the supervisor has reaped ``pid``: only then has its last thread closed its listening
    socket (its main thread shows as a zombie earlier), so no new connection can land there."""
    await asyncio.to_thread(_wait_output, proc, f"(pid {pid}) was killed by SIGKILL")


async def test_a_killed_worker_is_restarted_and_the_server_keeps_answering(
    stackd_serve: Any, write_config: Callable[..., Path], session: aiohttp.ClientSession,
) -> None:
    """What the killed worker held is lost with it (its connections are cut); every new connection
    from then on is answered, by the surviving worker and then by both."""
    proc = stackd_serve(str(write_config(server="  port: 0\n  workers: 2\n")))
    url = await asyncio.to_thread(proc.wait_serving, 60)
    before = await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    await _dead(proc, victim)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.post(url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
        after = children(proc.proc.pid)
        if len(after) == 2 and victim not in after:
            break
        await asyncio.sleep(0.05)
    after = children(proc.proc.pid)
    assert len(after) == 2 and victim not in after, after
    await asyncio.to_thread(_wait_output, proc, "is serving again")
    assert f"(pid {victim}) was killed by SIGKILL" in proc.output() and "restarting it in 0.5 s" in proc.output()
    # Killed again at once: the next restart waits longer (backoff), the server still answers.
    again = next(iter(after - before))
    os.kill(again, signal.SIGKILL)
    await _dead(proc, again)
    assert "restarting it in 1.0 s" in proc.output()
    for _ in range(5):
        async with session.post(url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
    await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


def test_workers_stop_when_the_supervisor_is_killed(stackd_serve: Any, write_config: Callable[..., Path]) -> None:
    proc = stackd_serve(str(write_config(server="  port: 0\n  workers: 2\n")))
    proc.wait_serving(60)
    workers = wait_for_workers(proc.proc.pid, 2)
    proc.proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.05)
    assert "the supervisor process is gone; shutting down" in proc.output()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _wait_output(proc: Any, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.05)


@pytest.mark.parametrize(("signals", "grace"), [(1, 1.5), (2, 30.0)])
async def test_sigterm_under_two_workers_ends_streams_with_a_frame_and_the_supervisor_exits(
    stackd_serve: Any, vllm_file: Callable[..., Path], signals: int, grace: float,
) -> None:
    pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
    async with FakeOpenAI(chunks=1_000_000, chunk_delay=0.02) as upstream:
        config = vllm_file(upstream.url, server=f"  port: 0\n  workers: 2\n  shutdown_grace: {grace}\n")
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving, 60)
        pids = await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
        server_port = _port_of(url)
        holders: set[int | None] = set()
        all_streaming = asyncio.Event()
        messages = [{"role": "user", "content": "hi"}]

        async def stream(s: aiohttp.ClientSession) -> bytes:
            async with s.post(url + "/v1/chat/completions",
                              json={"model": "chat", "messages": messages, "stream": True}) as resp:
                assert resp.status == 200
                holders.add(worker_of(pids, server_port, client_port(resp)))  # before the body: still held
                started.append(1)
                if len(started) == len(sessions):
                    all_streaming.set()
                return await resp.read()  # raises ClientPayloadError if the chunked body is cut

        sessions = [aiohttp.ClientSession() for _ in range(8)]  # a connection each: both workers stream
        started: list[int] = []
        try:
            tasks = [asyncio.create_task(stream(s)) for s in sessions]
            await asyncio.wait_for(all_streaming.wait(), 30)
            assert holders == pids, holders
            began = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            if signals == 2:
                await asyncio.sleep(0.5)
                proc.proc.send_signal(signal.SIGINT)
            rc = await asyncio.to_thread(proc.wait, 30)
            took = time.monotonic() - began
            bodies = await asyncio.gather(*tasks)
        finally:
            for s in sessions:
                await s.close()
    assert rc == 0, proc.output()
    assert (grace - 0.1 < took < grace + 4) if signals == 1 else took < 4, (took, proc.output())
    for body in bodies:
        frames = [f for f in body.split(b"\n\n") if f]
        last = orjson.loads(frames[-1].removeprefix(b"data: "))
        assert last["error"]["type"] == "service_unavailable" and "shutting down" in last["error"]["message"]
    assert not children(proc.proc.pid)
    assert "Traceback" not in proc.output()


# -- startup -------------------------------------------------------------------------------------

def test_a_busy_port_is_reported_once(stackd_serve: Any, write_config: Callable[..., Path]) -> None:
    first = stackd_serve(str(write_config(server="  port: 0\n  workers: 2\n")))
    busy = _port_of(first.wait_serving(60))
    # Refused even though the workers' sockets have SO_REUSEPORT: never joined to another server.
    second = stackd_serve(str(write_config(name="b.yaml", server=f"  port: {busy}\n  workers: 2\n")))
    assert second.wait(30) == 1
    assert second.output().count("cannot listen on") == 1, second.output()
    assert first.stop() == 0


def test_workers_of_one_server_share_the_store_but_another_server_is_refused(
    stackd_serve: Any, write_config: Callable[..., Path],
) -> None:
    first = stackd_serve(str(write_config(server="  port: 0\n  workers: 3\n")))
    first.wait_serving(60)
    second = stackd_serve(str(write_config(name="b.yaml", server="  port: 0\n  workers: 2\n")), "--workers", "2")
    assert second.wait(30) == 1
    out = second.output()
    assert out.count("could not start") == 1 and "is in use by process" in out, out
    assert f"process {first.proc.pid}" in out  # the supervisor holds the lock for its workers
    assert first.stop() == 0
    # The lock went with the server: a new one starts on the same store.
    third = stackd_serve(str(write_config(name="c.yaml", server="  port: 0\n")), "--workers", "2")
    third.wait_serving(60)
    assert third.stop() == 0


def test_a_worker_that_cannot_start_is_reported_once_and_nothing_hangs(
    stackd_serve: Any, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    """The inference store cannot be opened (a file where its directory should be): every worker
    would fail; the server says so once and exits non-zero."""
    (tmp_path / "blocker").write_text("a file, not a directory")
    text = write_config(server="  port: 0\n  workers: 4\n").read_text()
    text = text.replace(str(tmp_path / "inference_store.db"), str(tmp_path / "blocker" / "i.db"))
    config = write_config(text=text, name="bad.yaml")
    proc = stackd_serve(str(config))
    assert proc.wait(60) == 1
    out = proc.output()
    assert out.count("could not start") == 1, out
    assert " serving " not in out and "Traceback" not in out


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_out_of_bounds_is_a_config_error(run_cli: Any, write_config: Callable[..., Path], value: str) -> None:
    result = run_cli("validate", str(write_config(server=f"  workers: {value}\n")))
    assert result.returncode == 2
    assert "$.server.workers" in result.stderr and ("from 1 to 64" in result.stderr or "integer" in result.stderr)


@pytest.mark.parametrize("value", ["0", "65", "x"])
def test_workers_flag_out_of_bounds(run_cli: Any, write_config: Callable[..., Path], value: str) -> None:
    result = run_cli("serve", str(write_config()), "--workers", value)
    assert result.returncode == 2
    assert "--workers: expected a number of processes from 1 to 64" in result.stderr


def test_an_unknown_socket_mode_is_refused(run_cli: Any, write_config: Callable[..., Path]) -> None:
    result = run_cli("serve", str(write_config(server="  port: 0\n")), "--workers", "2",
                     env={"STACKD_WORKER_SOCKETS": "round-robin"})
    assert result.returncode == 2 and "STACKD_WORKER_SOCKETS must be" in result.stderr


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_workers_need_linux(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    from stackd.server.workers import workers_unsupported

    assert workers_unsupported() is None  # these tests run on Linux
    monkeypatch.setattr("sys.platform", platform)
    message = workers_unsupported()
    assert message is not None and f"this is {platform}" in message and "server.workers: 1" in message


# -- metrics and logs of several workers ----------------------------------------------------------

@pytest.mark.parametrize("early", [False, True], ids=["plain", "prometheus-imported-first"])
async def test_every_worker_scrapes_the_sum_of_all_workers_and_log_lines_name_their_worker(
    stackd_serve: Any, write_config: Callable[..., Path], session: aiohttp.ClientSession, tmp_path: Path,
    early: bool,
) -> None:
    """workers: 2 — whichever worker answers /metrics counts the requests of both; JSON log lines
    (access lines included) keep their format and say which worker (and pid) wrote them. Also when
    something imported prometheus-client before stackd could choose its mode (a sitecustomize)."""
    from tests.test_metrics import parse, value

    env = {}
    if early:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import prometheus_client  # noqa: F401\n")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    config = write_config(server="  port: 0\n  workers: 2\n  metrics: {access: public}\n")
    proc = stackd_serve(str(config), env=env)
    url = await asyncio.to_thread(proc.wait_serving, 60)
    pids = await asyncio.to_thread(wait_for_workers, proc.proc.pid, 2)
    answered_by: set[int] = set()
    for _ in range(40):
        async with session.get(url + "/v1/models") as resp:
            assert resp.status == 200
    scrapes = []
    for _ in range(12):  # a new connection each: both workers answer some of them
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200
            scrapes.append(value(parse(await resp.text()), "stackd_http_requests_total",
                                 route="/v1/models", method="GET", status="200"))
    assert scrapes == [40.0] * 12, scrapes
    assert proc.stop() == 0
    lines = [orjson.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "stackd.access"]
    assert len(access) >= 52, len(access)
    for line in access:
        assert line["pid"] in pids and line["worker"] in (0, 1), line
        answered_by.add(line["pid"])
    assert answered_by == pids  # both workers served, and both wrote JSON access lines
