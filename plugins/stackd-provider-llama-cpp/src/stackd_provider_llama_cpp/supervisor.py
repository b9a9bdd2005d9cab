"""Keeps one model's worker process running: start, self-check, restart with backoff, give up.

Rules (documented in the plugin's README):

- A worker that dies while serving is restarted at once the first time; each further death
  within ``STABLE_SECONDS`` of the previous start doubles the wait (0.5 s, 1 s, 2 s... at most
  ``MAX_BACKOFF``). A worker that stayed up ``STABLE_SECONDS`` starts the count afresh.
- A worker that dies before it is ready (at load or in its one-token self-check) is retried
  ``START_ATTEMPTS`` times in all, with the same doubling waits; then the model is *failed*:
  no more restarts until stackd restarts, calls get 503 with the reason and the remedy.
- A load error the worker reports itself (missing file, not a GGUF, unknown chat format) fails
  the model at once: retrying cannot help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from stackd import metrics
from stackd_provider_llama_cpp.config import ModelConfig
from stackd_provider_llama_cpp.process import LoadFailed, WorkerDied, WorkerProcess, exit_name

__all__ = ["MAX_BACKOFF", "STABLE_SECONDS", "START_ATTEMPTS", "ModelSupervisor", "remedy"]

log = logging.getLogger("stackd.providers.llama_cpp")

START_ATTEMPTS = 3
STABLE_SECONDS = 60.0
MAX_BACKOFF = 30.0
_FIRST_BACKOFF = 0.5

PORTABLE_FIX = (
    "rebuild llama-cpp-python for any x86-64 CPU with AVX2: "
    "`python3 tools/llama_cpp_wheel.py --install --force-rebuild` from a stackd checkout "
    "(README: Quick start), or `CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
    "-DGGML_F16C=ON\" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python`"
)


def remedy(returncode: int) -> str:
    """The likely cause and fix of a worker's death, for logs, errors and health."""
    name = exit_name(returncode)
    if name == "SIGILL":
        return f"llama.cpp was compiled for another CPU (an instruction this one lacks); {PORTABLE_FIX}"
    if name in ("SIGSEGV", "SIGBUS"):
        return (
            "a crash inside llama.cpp; a build compiled with -march=native on a CPU that advertises "
            f"AMX or AVX-512 the VM does not enable does this; {PORTABLE_FIX}"
        )
    if name == "SIGKILL":
        return "killed, most likely by the kernel's out-of-memory killer: free memory or lower n_ctx"
    if name == "SIGABRT":
        return "llama.cpp aborted (a failed assertion; its message is in the log above)"
    return "see the worker's output in the log above"


class ModelSupervisor:
    """The lifecycle of one model's worker. States: ``loading`` (first start), ``up``,
    ``restarting``, ``failed`` (permanent, with ``error``), ``closed``."""

    def __init__(self, cfg: ModelConfig, path: str, provider_id: str) -> None:
        self.cfg = cfg
        self.path = path
        self.provider_id = provider_id
        self.state = "loading"
        self.error: str | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.info: dict[str, Any] = {}
        self.worker: WorkerProcess | None = None
        self.next_start_at = 0.0
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()  # first start over, well or badly
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ModelSupervisor {self.cfg.model_id} {self.state} restarts={self.restarts}>"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"llama-cpp {self.cfg.model_id}: supervisor"
        )

    async def settled(self) -> None:
        await self._settled.wait()

    def _set(self, state: str) -> None:
        self.state = state
        self._changed.set()
        self._changed = asyncio.Event()
        if state != "loading":
            self._settled.set()

    async def wait_up(self) -> WorkerProcess | None:
        """The running worker, once a restart under way is over; None if the model failed or closed.
        The caller bounds the wait (``asyncio.timeout``)."""
        while self.state in ("loading", "restarting") or (self.state == "up" and not self._alive()):
            await self._changed.wait()
        return self.worker if self.state == "up" and self._alive() else None

    def _alive(self) -> bool:
        return self.worker is not None and self.worker.alive

    async def _run(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:  # never leave the model "loading" forever: callers wait on it
            log.exception("llama-cpp: model %s: supervising its worker failed", self.cfg.model_id)
            self._fail(f"model {self.cfg.model_id!r}: its worker process could not be run: "
                       f"{type(exc).__name__}: {exc}")

    async def _supervise(self) -> None:
        failed_starts = 0
        streak = 0  # deaths while serving, each within STABLE_SECONDS of its start
        model = self.cfg.model_id
        while True:
            started = time.monotonic()
            worker = await WorkerProcess.start(self.cfg, self.path)
            self.worker = worker
            try:
                self.info = await worker.wait_ready()
            except LoadFailed as exc:
                await worker.stop()
                self._fail(str(exc))
                return
            except WorkerDied as exc:
                failed_starts += 1
                self.last_exit = exit_name(exc.returncode)
                why = (
                    f"model {model!r}: the llama.cpp worker died with {self.last_exit} while loading "
                    f"the model or in its one-token self-check; {remedy(exc.returncode)}"
                )
                if failed_starts >= START_ATTEMPTS:
                    self._fail(f"{why} (failed {failed_starts} times; not restarted again until stackd restarts)")
                    return
                delay = _FIRST_BACKOFF * 2 ** (failed_starts - 1)
                log.error("llama-cpp: %s; start %d of %d, retrying in %.1f s",
                          why, failed_starts, START_ATTEMPTS, delay)
                await self._backoff(delay)
                continue
            failed_starts = 0
            if self.state == "loading":
                log.info("llama-cpp: model %s: worker pid %d ready in %.1f s", model, worker.pid,
                         time.monotonic() - started)
            else:
                log.info("llama-cpp: model %s: worker pid %d restarted", model, worker.pid)
            self._set("up")
            returncode = await asyncio.shield(worker.exited)
            # Deaths that were asked for (close()) cancel this task before it gets here.
            self.restarts += 1
            metrics.worker_restart(self.provider_id)
            self.last_exit = exit_name(returncode)
            streak = streak + 1 if time.monotonic() - started < STABLE_SECONDS else 1
            delay = 0.0 if streak == 1 else min(MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (streak - 2))
            self._set("restarting")
            log.error(
                "llama-cpp: model %s: worker pid %d died with %s; %s; restarting in %.1f s (restart %d)",
                model, worker.pid, self.last_exit, remedy(returncode), delay, self.restarts,
            )
            await self._backoff(delay)

    async def _backoff(self, delay: float) -> None:
        self.next_start_at = time.monotonic() + delay
        if delay:
            await asyncio.sleep(delay)

    def _fail(self, message: str) -> None:
        self.error = message
        self._set("failed")
        log.error("llama-cpp: provider %s: model %s failed: %s", self.provider_id, self.cfg.model_id, message)

    async def health(self) -> dict[str, Any]:
        status = {"up": "OK", "failed": "Error"}.get(self.state, self.state.capitalize())
        out: dict[str, Any] = {"status": status, "restarts": self.restarts}
        if self.error is not None:
            out["message"] = self.error
        if self.last_exit is not None:
            out["last_exit"] = self.last_exit
        worker = self.worker
        if worker is not None and worker.alive:
            out["pid"] = worker.pid
            rss = await asyncio.to_thread(_rss_bytes, worker.pid)
            if rss is not None:
                out["rss_bytes"] = rss
        return out

    async def close(self) -> None:
        self._set("closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.worker is not None:
            await self.worker.stop()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None

