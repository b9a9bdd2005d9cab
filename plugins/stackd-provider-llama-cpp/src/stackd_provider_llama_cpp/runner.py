"""A model's worker process: ``python -m stackd_provider_llama_cpp.runner``.

It loads one model, runs a one-token self-check, then serves ``run`` frames one after another
(a llama.cpp context is not thread-safe, and two generations at once would only split the same
cores). A second thread reads frames, so a ``cancel`` reaches the running job between two
tokens. The worker never outlives the provider: EOF on stdin (the provider closed it, or died)
ends it at once, and on Linux the kernel sends it SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), should the pipe be held open by someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from stackd_provider_llama_cpp.config import ModelConfig
from stackd_provider_llama_cpp.loading import ModelLoadError
from stackd_provider_llama_cpp.protocol import CONFIG_ENV, ProtocolError, encode, read_frame_fd

__all__ = ["CRASH_ENV", "main"]

# Test hook, honoured only here: "MODEL_ID:selfcheck:SIGNAME[,...]" makes the worker of MODEL_ID
# kill itself with SIGNAME during its self-check, as a build the CPU cannot run would.
CRASH_ENV = "STACKD_LLAMA_CPP_TEST_CRASH"

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect: then we were re-parented already.
    if os.getppid() != parent:
        os._exit(0)


def _protocol_fd() -> int:
    """A private copy of stdout for frames; fd 1 itself then points at stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return fd


class _Sender:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        data = memoryview(encode(message))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data):]


def _crash_if_asked(model_id: str, stage: str) -> None:
    for rule in filter(None, os.environ.get(CRASH_ENV, "").split(",")):
        target, _, rest = rule.partition(":")
        where, _, name = rest.partition(":")
        if target == model_id and where == stage:
            os.kill(os.getpid(), signal.Signals[name or "SIGSEGV"])
            time.sleep(10)  # the signal is delivered before this returns


def _read_requests(jobs: queue.SimpleQueue[tuple[int, str, dict[str, Any], threading.Event]],
                   cancels: dict[int, threading.Event]) -> None:
    """Reader thread: queue ``run`` frames, set the flag of a ``cancel``ed job, exit on EOF."""
    try:
        while (frame := read_frame_fd(0)) is not None:
            job_id = int(frame.get("id", -1))
            if frame.get("op") == "run":
                event = cancels.setdefault(job_id, threading.Event())
                jobs.put((job_id, str(frame["kind"]), dict(frame["kwargs"]), event))
            elif frame.get("op") == "cancel" and (flag := cancels.get(job_id)) is not None:
                flag.set()  # a job that has already ended has no flag left: nothing to stop
    except (ProtocolError, OSError, ValueError, KeyError) as exc:
        print(f"stackd llama-cpp worker {os.getpid()}: bad request stream: {exc}", file=sys.stderr)
        os._exit(2)
    # The provider closed our stdin (shutdown) or died: nothing is listening any more.
    os._exit(0)


def main() -> None:
    setup = orjson.loads(os.environ[CONFIG_ENV])
    _die_with_parent(int(setup["parent"]))
    # Ctrl-C in a terminal reaches the whole process group; the provider decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send = _Sender(_protocol_fd())
    model = dict(setup["model"])
    if model.get("model_path") is not None:
        model["model_path"] = Path(model["model_path"])
    cfg = ModelConfig(**model)
    path = Path(setup["path"])

    # Imported here, after the fds are set up: importing llama.cpp loads its shared library.
    from stackd_provider_llama_cpp.jobs import model_info, run_job, self_check
    from stackd_provider_llama_cpp.runtime import load_model, system_info

    started = time.monotonic()
    try:
        llama = load_model(cfg, path)
    except ModelLoadError as exc:
        send({"ev": "load_error", "message": str(exc)})
        os._exit(3)
    loaded = time.monotonic()
    _crash_if_asked(cfg.model_id, "selfcheck")
    self_check(llama, cfg)
    info = model_info(llama)
    info.update(load_seconds=loaded - started, self_check_seconds=time.monotonic() - loaded,
                system_info=system_info())
    send({"ev": "ready", "info": info})

    jobs: queue.SimpleQueue[tuple[int, str, dict[str, Any], threading.Event]] = queue.SimpleQueue()
    cancels: dict[int, threading.Event] = {}
    threading.Thread(target=_read_requests, args=(jobs, cancels), name="requests", daemon=True).start()
    while True:
        job_id, kind, kwargs, cancel = jobs.get()
        try:
            if cancel.is_set():
                send({"ev": "end", "id": job_id, "stats": {"prompt_tokens": 0, "completion_tokens": 0},
                      "cancelled": True})
                continue
            # From here a death of this worker is this job's doing (or at least its lot); jobs
            # still queued behind it are re-run by the provider on the restarted worker.
            send({"ev": "start", "id": job_id})
            run_job(llama, job_id, kind, kwargs, cancel, send)
        finally:
            cancels.pop(job_id, None)


if __name__ == "__main__":
    main()
