"""Attacks on the server's state (issue #10, "config and state"): a second server on the same
store, a start that fails, a state directory or disk that cannot be written. Real ``stackd
serve`` processes where the behaviour is the process's (exit, signals, what it prints)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stackd.errors import NotFound, UpstreamUnavailable
from stackd.kvstore.sqlite import SqliteKVStore
from stackd.loading import parse_config
from stackd.stack import open_stack

STACKD = str(Path(sys.executable).with_name("stackd"))

ECHO = """\
version: 2
image_name: {name}
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [echo-1, echo-2, echo-3]}}
{stores}models: {models}
"""
THREE = "\n- model_id: a\n  provider_model_id: echo-1\n- model_id: b\n  provider_model_id: echo-2\n" \
        "- model_id: c\n  provider_model_id: echo-3\n"


def echo_config(path: Path, *, models: str = THREE, name: str = "shared", stores: str = "") -> Path:
    path.write_text(ECHO.format(models=models, name=name, stores=stores), encoding="utf-8")
    return path


def request(url: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def model_ids(url: str) -> list[str]:
    status, body = request(f"{url}/v1/models")
    assert status == 200, body
    return sorted(m["identifier"] for m in body["data"])


# ---- one live server per store -------------------------------------------------------------------


def test_a_second_server_on_the_same_state_is_refused_and_leaves_the_first_ones_models(
    tmp_path: Path, stackd_serve: Callable[..., Any], port: Callable[[], int]
) -> None:
    first = stackd_serve(str(echo_config(tmp_path / "a.yaml")), "--port", str(port()))
    url = first.wait_serving()
    assert model_ids(url) == ["a", "b", "c"]

    # The attack: the same STACKD_HOME and image_name, a config with no models, another port.
    second = stackd_serve(str(echo_config(tmp_path / "b.yaml", models="[]")), "--port", str(port()))
    assert second.wait(timeout=20) == 1
    err = "".join(second.stderr)
    db = tmp_path / "stackd-home" / "shared" / "registry.db"
    assert f"the metadata store '{db}' is in use by process {first.proc.pid}" in err
    assert f"lock file '{db}.lock'" in err
    assert "another STACKD_HOME, another image_name, or another metadata_store.db_path" in err
    assert "Traceback" not in err and "cannot listen" not in err
    assert model_ids(url) == ["a", "b", "c"]  # nothing of the first server's was unregistered

    # The lock dies with its process, even one killed without a chance to clean up.
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    third = stackd_serve(str(echo_config(tmp_path / "b.yaml", models="[]")), "--port", str(port()))
    assert model_ids(third.wait_serving()) == []
    assert third.stop() == 0


def test_two_servers_with_their_own_image_names_share_a_state_directory(
    tmp_path: Path, stackd_serve: Callable[..., Any], port: Callable[[], int]
) -> None:
    one = stackd_serve(str(echo_config(tmp_path / "a.yaml", name="one")), "--port", str(port()))
    two = stackd_serve(str(echo_config(tmp_path / "b.yaml", name="two", models="[]")), "--port", str(port()))
    assert model_ids(one.wait_serving()) == ["a", "b", "c"]
    assert model_ids(two.wait_serving()) == []
    assert one.stop() == 0 and two.stop() == 0


async def test_a_second_stack_in_one_process_is_refused_too(tmp_path: Path) -> None:
    # flock locks are per open file, so the rule holds inside one process as well.
    db = tmp_path / "r.db"
    text = echo_config(tmp_path / "a.yaml", stores=f"metadata_store: {{type: sqlite, db_path: {db}}}\n"
                       f"inference_store: {{type: sqlite, db_path: {tmp_path / 'i.db'}}}\n").read_text()
    async with open_stack(parse_config(text, env={})):
        with pytest.raises(UpstreamUnavailable, match=f"the metadata store '{db}' is in use by process {os.getpid()}"):
            async with open_stack(parse_config(text, env={})):
                pass
    async with open_stack(parse_config(text, env={})):  # released when the first stack closed
        pass


async def test_a_start_that_fails_in_reconcile_writes_nothing(tmp_path: Path) -> None:
    stores = (f"metadata_store: {{type: sqlite, db_path: {tmp_path / 'r.db'}}}\n"
              f"inference_store: {{type: sqlite, db_path: {tmp_path / 'i.db'}}}\n")
    good = echo_config(tmp_path / "a.yaml", stores=stores).read_text()
    async with open_stack(parse_config(good, env={})) as stack:
        assert sorted(m.identifier for m in await stack.registry.models.load()) == ["a", "b", "c"]
    # "a" stays, "b" and "c" leave the file, "x" names a model the provider refuses at start.
    bad = echo_config(tmp_path / "b.yaml", stores=stores, models=(
        "\n- model_id: a\n  provider_model_id: echo-1\n- model_id: x\n  provider_model_id: nope\n")).read_text()
    with pytest.raises(NotFound, match="does not serve 'nope'"):
        async with open_stack(parse_config(bad, env={})):
            pass
    kv = await SqliteKVStore.open(tmp_path / "r.db")
    try:
        assert [k for k, _ in await kv.scan("model:")] == ["model:a", "model:b", "model:c"]
    finally:
        await kv.close()


# ---- a start that fails exits, says why, and honours signals -------------------------------------


def test_a_store_that_cannot_be_prepared_ends_the_process_with_its_name(
    tmp_path: Path, stackd_serve: Callable[..., Any], port: Callable[[], int]
) -> None:
    # A file that is not SQLite fails after the connection opened, as a read-only or full disk
    # does; the connection's thread used to outlive the failure and keep the process alive.
    db = tmp_path / "stackd-home" / "shared" / "registry.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"\x89not a database\x00" * 512)
    proc = stackd_serve(str(echo_config(tmp_path / "a.yaml")), "--port", str(port()))
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("stackd did not exit after its start failed")
    err = "".join(proc.stderr)
    assert rc == 1, err
    assert f"the SQLite store '{db}' cannot be prepared: file is not a database" in err
    assert "Traceback" not in err


def test_an_unwritable_state_directory_is_named_not_the_port(
    tmp_path: Path, stackd_serve: Callable[..., Any], port: Callable[[], int]
) -> None:
    # A regular file where a directory is needed fails for root too (chmod would not).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    home = blocker / "home"
    proc = stackd_serve(str(echo_config(tmp_path / "a.yaml")), "--port", str(port()), env={"STACKD_HOME": str(home)})
    assert proc.wait(timeout=20) == 1
    err = "".join(proc.stderr)
    assert f"cannot use the state directory '{home}' (STACKD_HOME)" in err
    assert "Not a directory" in err
    assert "cannot listen" not in err and "Traceback" not in err


# ---- a disk that fills up while serving ------------------------------------------------------------


def test_a_full_disk_makes_registry_writes_503_naming_the_store(tmp_path: Path, port: Callable[[], int]) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past a size, as a full disk does, without root."""
    limit = 512 * 1024
    home = tmp_path / "home"
    config = echo_config(tmp_path / "a.yaml")
    p = port()
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKD_")}
    env.update(STACKD_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, STACKD, "serve", str(config), "--port", str(p)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{p}"
        deadline = time.monotonic() + 20
        while not any(" serving " in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        pad = "x" * (64 * 1024)
        statuses = []
        for i in range(40):
            status, body = request(f"{url}/v1/models", {"model_id": f"m{i}", "provider_model_id": "echo-1",
                                                         "metadata": {"pad": pad}})
            statuses.append(status)
            if status != 200:
                break
        assert statuses[-1] == 503, (statuses, body)
        assert body["error"]["type"] == "service_unavailable"
        db = home / "shared" / "registry.db"
        assert body["error"]["message"].startswith(f"the SQLite store '{db}' cannot be used: ")
        assert "free space on its disk" in body["error"]["message"] or "disk I/O" in body["error"]["message"]
        # The server stays up and reads still work.
        assert "a" in model_ids(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


# ---- the kvstore layer: what SQLite says becomes a 503 naming the file -------------------------------


async def test_a_store_held_locked_by_another_process_is_503_after_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    kv = await SqliteKVStore.open(db)
    await kv.set("model:a", "1")
    holder = await asyncio.create_subprocess_exec(  # another program holding the file's write lock
        sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(30)", str(db),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and await holder.stdout.readline() == b"locked\n"
        with pytest.raises(UpstreamUnavailable) as info:
            await kv.set("model:b", "2")
        assert info.value.status == 503
        assert info.value.message == (f"the SQLite store '{db}' cannot be used: database is locked; another process "
                                      "holds the file locked; stop it or give this server its own db_path")
        assert await kv.get("model:a") == "1"  # reads go on (WAL)
    finally:
        holder.kill()
        await holder.wait()
        await kv.close()
    again = await SqliteKVStore.open(db)
    await again.set("model:b", "2")  # the lock died with its holder
    await again.close()


async def test_a_store_that_fails_to_open_leaves_no_thread_behind(tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    db.write_bytes(b"not sqlite at all" * 1000)
    with pytest.raises(UpstreamUnavailable, match=f"the SQLite store '{db}' cannot be prepared: file is not a "
                       "database"):
        await SqliteKVStore.open(db)
    for _ in range(100):  # the closed connection's thread ends just after close() returns
        if not _sqlite_threads():
            break
        await asyncio.sleep(0.01)
    assert _sqlite_threads() == []


def _sqlite_threads() -> list[str]:
    """aiosqlite's connection threads: not daemons, so one left running keeps a process from exiting."""
    return [t.name for t in threading.enumerate() if "_connection_worker_thread" in t.name]
