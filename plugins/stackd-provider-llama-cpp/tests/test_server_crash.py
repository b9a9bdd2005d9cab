"""A real ``stackd serve`` process whose llama.cpp workers crash: the server itself never does.

One provider serves the bundled model; a second one's model is forced (by the worker-only test
hook) to die with SIGILL in its self-check, as a -march=native build does on a CPU it was not
built for.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from stackd_provider_llama_cpp.runner import CRASH_ENV

pytestmark = pytest.mark.slow

CONFIG = """\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: llama
    provider_type: inline::llama-cpp
    config:
      models:
      - {model_id: gemma3-270m, n_ctx: 512, max_tokens: 16}
  - provider_id: broken
    provider_type: inline::llama-cpp
    config:
      models:
      - {model_id: crashy, n_ctx: 128}
models:
- {model_id: gemma3-270m, provider_id: llama}
- {model_id: crashy, provider_id: broken}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


class Server:
    def __init__(self, proc: subprocess.Popen[str], base: str) -> None:
        self.proc = proc
        self.base = base
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def worker_pid(self, provider: str, model: str) -> int:
        """The model's live worker: /v1/providers shows the health of the last readiness run (at most
        1.5 s old), which may still name a worker that was just replaced."""
        deadline = time.monotonic() + 10
        while True:
            health = httpx.get(f"{self.base}/v1/providers/{provider}", timeout=5).json()["health"]
            pid = health["models"][model].get("pid")
            if pid is not None and _alive(int(pid)):
                return int(pid)
            assert time.monotonic() < deadline, f"no live worker of {model} reported: {health}"
            time.sleep(0.2)

    def model_health(self, provider: str, model: str) -> dict[str, Any]:
        health = httpx.get(f"{self.base}/v1/providers/{provider}", timeout=5).json()["health"]
        return dict(health["models"][model])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    port = _free_port()
    env = {**os.environ, "STACKD_HOME": str(tmp_path / "home"), CRASH_ENV: "crashy:selfcheck:SIGILL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackd.cli", "serve", str(config), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    srv = Server(proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"stackd exited early:\n{srv.output()}"
            try:
                body = httpx.get(f"{srv.base}/v1/health", timeout=1).json()
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            message = body.get("message", "")
            settled = message.startswith("not ready: ") and not message.startswith("not ready: loading")
            if body.get("status") == "OK" or settled:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the providers did not settle in 90 s:\n{srv.output()}")
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        srv._reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


# Gemma 3's end-of-sequence tokens forbidden: ~400 tokens, seconds of generation to kill it in.
ENDLESS = {"model": "gemma3-270m", "prompt": "Once upon a time", "max_tokens": 400,
           "logit_bias": {"1": -100, "106": -100}}


def _chat(server: Server, model: str = "gemma3-270m", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 8, **extra}
    return httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=60)


def test_crashes_fail_only_their_requests_and_the_server_never_dies(server: Server) -> None:
    # The model that dies in its self-check: unhealthy with reason and remedy, no crash loop.
    health = httpx.get(f"{server.base}/v1/health", timeout=5)
    assert health.status_code == 503
    message = health.json()["message"]
    assert health.json()["status"] == "Error"
    assert message.startswith("not ready: broken: model loading failed: model 'crashy': the llama.cpp worker "
                              "died with SIGILL")
    assert "tools/llama_cpp_wheel.py --install --force-rebuild" in message
    assert "Retry-After" not in health.headers
    crashy = server.model_health("broken", "crashy")
    assert crashy["status"] == "Error" and crashy["last_exit"] == "SIGILL" and "pid" not in crashy
    refused = _chat(server, "crashy")
    assert refused.status_code == 503
    assert "self-check" in refused.json()["error"]["message"]
    assert server.output().count("retrying in") == 2  # three starts in all, then no more

    # The other provider serves, before and after its worker is killed mid-generation.
    assert _chat(server).status_code == 200
    pid = server.worker_pid("llama", "gemma3-270m")
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGSEGV))
    killer.start()
    died = httpx.post(f"{server.base}/v1/completions", json=ENDLESS, timeout=60)
    killer.join()
    assert died.status_code == 502, died.text
    assert "gemma3-270m" in died.json()["error"]["message"]
    assert "died with SIGSEGV" in died.json()["error"]["message"]
    assert _chat(server).status_code == 200

    # A stream that already began ends with one error frame.
    pid = server.worker_pid("llama", "gemma3-270m")
    with httpx.stream("POST", f"{server.base}/v1/completions", timeout=60, json={**ENDLESS, "stream": True}) as resp:
        assert resp.status_code == 200
        events = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(pid, signal.SIGSEGV)
    assert '"error"' in events[-1] and "died with SIGSEGV" in events[-1]
    assert sum('"error"' in e for e in events) == 1
    assert _chat(server).status_code == 200

    assert server.model_health("llama", "gemma3-270m")["restarts"] == 2
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()


def test_sigterm_stops_the_workers_with_the_server(server: Server) -> None:
    pid = server.worker_pid("llama", "gemma3-270m")
    assert _alive(pid)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "a worker outlived its server"
        time.sleep(0.05)
    assert "Traceback" not in server.output()
