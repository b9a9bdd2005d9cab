"""Processes of the benchmark: start, wait until healthy, read CPU and memory from /proc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Server", "cpu_seconds", "free_port", "loadgen_phase", "peak_rss_mb", "rss_mb", "start_server",
           "start_upstream",
           "tree_cpu_seconds"]

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields are counted after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICK


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass  # gone meanwhile
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its live descendants (nginx's worker, stackd's llama.cpp workers)."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo += _children(current)
    return total


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


@attrs.define
class Server:
    """A server process the benchmark started; :meth:`stop` ends it (by its own pid only)."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    start_seconds: float
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_upstream(work: Path, chunks: int = 64, token_interval_ms: float = 0.0) -> Server:
    """The fake OpenAI upstream every benchmark proxies to, on a free port, logging into ``work``."""
    from bench import peers

    port = free_port()
    return start_server("upstream", peers.upstream_argv(port, chunks, token_interval_ms), f"http://127.0.0.1:{port}",
                        "/health", work / "upstream.log")


def start_server(
    name: str,
    argv: Sequence[str],
    url: str,
    health_path: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Server:
    """Start ``argv`` and poll ``url + health_path`` until it answers 200.

    ``start_seconds`` is process start -> first 200 (polled every 10 ms). ``python -m`` puts the
    working directory first on ``sys.path``, ahead of ``PYTHONPATH``: a server that must import
    another source tree (a baseline) is started in that tree (``cwd``).
    """
    log = log_path.open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
    )
    server = Server(name, proc, url, 0.0, log_path)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before it was healthy:\n"
                               f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(url + health_path, timeout=1.0) as resp:
                if resp.status == 200:
                    server.start_seconds = time.perf_counter() - started
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.01)
    server.stop()
    raise RuntimeError(f"{name} was not healthy at {url}{health_path} after {timeout:.0f} s:\n{server.log_tail()}")


def loadgen_phase(argv: Sequence[str], server: Server, pids: Sequence[int]) -> tuple[dict[str, Any], list[float]]:
    """Run ``bench/loadgen.py`` (``argv``): its warm-up, then the measured phase, with the CPU
    seconds each of ``pids`` spent exactly around that phase. Fails on a warm-up or phase error."""
    gen = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        warm = json.loads(gen.stdout.readline() or "{}")
        if not warm.get("ok") or warm.get("errors"):
            raise RuntimeError(f"{server.name}: the warm-up failed: {warm}\n{server.log_tail()}")
        before = [cpu_seconds(pid) for pid in pids]
        gen.stdin.write("go\n")
        gen.stdin.flush()
        done = json.loads(gen.stdout.readline() or "{}")
        after = [cpu_seconds(pid) for pid in pids]
        gen.wait(timeout=30)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    if not int(done.get("ok") or 0) or done.get("errors"):
        raise RuntimeError(f"{server.name}: {done}")
    return done, [b - a for a, b in zip(before, after, strict=True)]
