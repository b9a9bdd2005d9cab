"""The worker process boundary: real workers killed with real signals, the bundled model.

Each test starts its own provider (about a second per model), on the test's own loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from stackd_provider_llama_cpp.inference import LlamaCppInference
from stackd_provider_llama_cpp.runner import CRASH_ENV
from stackd_provider_llama_cpp.supervisor import START_ATTEMPTS

from stackd import CallContext, metrics
from stackd.errors import UpstreamBadResponse, UpstreamUnavailable

from .conftest import _start, wait_loaded, wait_ready

pytestmark = pytest.mark.slow

CTX = CallContext()
LLM = "gemma3-270m"


def _endless(provider: LlamaCppInference, **extra: Any) -> dict[str, Any]:
    eos = provider._supervisors[LLM].info["token_eos"]
    return {"model": LLM, "prompt": "Once upon a time", "max_tokens": 900, "logit_bias": {str(eos): -100}, **extra}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose once it no longer runs.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


async def _wait_gone(pid: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        await asyncio.sleep(0.05)


async def _provider(n_ctx: int = 512) -> LlamaCppInference:
    provider = await _start({"models": [{"model_id": LLM, "n_ctx": n_ctx, "max_tokens": 8}]})
    await wait_ready(provider)
    return provider


def _restarts_counted() -> float:
    value = metrics.REGISTRY.get_sample_value("stackd_provider_worker_restarts_total", {"provider": "llama"})
    return value or 0.0


async def test_a_worker_killed_during_a_non_streamed_generation(caplog: pytest.LogCaptureFixture) -> None:
    provider = await _provider()
    counted = _restarts_counted()
    try:
        worker = provider._supervisors[LLM].worker
        assert worker is not None
        task = asyncio.create_task(provider.openai_completion(_endless(provider), CTX))
        await asyncio.sleep(0.5)  # ~900 tokens take many seconds: it is generating now
        assert not task.done()
        os.kill(worker.pid, signal.SIGSEGV)
        with pytest.raises(UpstreamBadResponse) as info:
            await task
        assert info.value.status == 502
        message = info.value.message
        assert message.startswith("model 'gemma3-270m' of inline::llama-cpp provider 'llama': the llama.cpp "
                                  "worker process died with SIGSEGV during this request")
        assert "tools/llama_cpp_wheel.py" in message and "retry the request" in message

        # The next request waits for the restarted worker and succeeds.
        result = await provider.openai_completion({"model": LLM, "prompt": "Hi", "max_tokens": 2}, CTX)
        assert isinstance(result, dict) and result["usage"]["completion_tokens"] > 0
        health = (await provider.health())["models"][LLM]
        assert health["restarts"] == 1 and health["last_exit"] == "SIGSEGV"
        assert _restarts_counted() == counted + 1  # stackd_provider_worker_restarts_total (docs/operations.md)
        assert health["pid"] != worker.pid
        assert provider.is_ready()
        # One log line for the death, without a traceback.
        deaths = [r for r in caplog.records if "died with SIGSEGV" in r.getMessage()]
        assert len(deaths) == 1 and deaths[0].exc_info is None
    finally:
        await provider.close()


async def test_a_worker_killed_during_a_stream_ends_it_with_an_error() -> None:
    provider = await _provider()
    try:
        worker = provider._supervisors[LLM].worker
        assert worker is not None
        stream = await provider.openai_completion(_endless(provider, stream=True), CTX)
        received = 0
        with pytest.raises(UpstreamBadResponse, match="died with SIGSEGV during this request"):
            async for _ in stream:  # type: ignore[union-attr]
                received += 1
                if received == 3:
                    os.kill(worker.pid, signal.SIGSEGV)
        assert received >= 3
        stream2 = await provider.openai_completion(
            {"model": LLM, "prompt": "The sky is", "max_tokens": 4, "stream": True}, CTX
        )
        chunks = [c async for c in stream2]  # type: ignore[union-attr]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert (await provider.health())["models"][LLM]["restarts"] == 1
    finally:
        await provider.close()


async def test_other_requests_and_models_keep_serving_while_a_worker_restarts() -> None:
    provider = await _start({"models": [
        {"model_id": LLM, "n_ctx": 512, "max_tokens": 8},
        {"model_id": "embed", "embedding": True, "n_ctx": 128},
    ]})
    try:
        await wait_ready(provider)
        worker = provider._supervisors[LLM].worker
        assert worker is not None
        running = asyncio.create_task(provider.openai_completion(_endless(provider), CTX))
        await asyncio.sleep(0.3)
        # Queued in the worker behind the running one: sent, not started.
        short = {"model": LLM, "prompt": "The sky is", "max_tokens": 3, "temperature": 0}
        queued = [asyncio.create_task(provider.openai_completion(short, CTX)),
                  asyncio.create_task(provider.openai_completion({**short, "stream": True}, CTX))]
        await asyncio.sleep(0.3)
        assert worker.busy == 3
        os.kill(worker.pid, signal.SIGKILL)
        # The embedding model's own worker answers throughout.
        embedded = await provider.openai_embeddings({"model": "embed", "input": "hello"}, CTX)
        assert len(embedded["data"][0]["embedding"]) == 640
        # The request that was running fails with the cause of death...
        with pytest.raises(UpstreamBadResponse, match=r"SIGKILL.*out-of-memory killer"):
            await running
        # ...and the queued ones, which had not started, run on the restarted worker.
        answer = await queued[0]
        assert isinstance(answer, dict) and answer["usage"]["completion_tokens"] == 3
        chunks = [c async for c in await queued[1]]  # type: ignore[union-attr]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        health = await provider.health()
        assert health["models"][LLM]["restarts"] == 1
        assert health["models"]["embed"]["restarts"] == 0
    finally:
        await provider.close()


async def test_a_worker_that_dies_in_its_self_check_fails_the_model_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CRASH_ENV, "crashy:selfcheck:SIGILL")
    broken = await _start({"models": [{"model_id": "crashy", "n_ctx": 256}]})
    healthy = await _provider(n_ctx=256)
    try:
        await wait_loaded(broken)
        assert not broken.is_ready()
        reason = broken.not_ready_reason()
        assert reason is not None
        assert reason.startswith("model loading failed: model 'crashy': the llama.cpp worker died with SIGILL "
                                 "while loading the model or in its one-token self-check; llama.cpp was compiled "
                                 "for another CPU")
        assert "tools/llama_cpp_wheel.py --install --force-rebuild" in reason
        assert f"failed {START_ATTEMPTS} times" in reason

        health = await broken.health()
        assert health["status"] == "Error" and health["message"] == reason
        assert health["models"]["crashy"]["status"] == "Error"
        assert health["models"]["crashy"]["last_exit"] == "SIGILL"
        with pytest.raises(UpstreamUnavailable) as info:
            await broken.openai_completion({"model": "crashy", "prompt": "x"}, CTX)
        assert info.value.status == 503 and "SIGILL" in info.value.message
        assert "Retry-After" not in info.value.headers

        # Bounded: START_ATTEMPTS starts, then no more.
        starts = [r for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(starts) == START_ATTEMPTS - 1
        dead = broken._supervisors["crashy"].worker
        await asyncio.sleep(2.5)
        assert broken._supervisors["crashy"].worker is dead
        assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) == START_ATTEMPTS - 1

        # Another provider's model serves all along.
        result = await healthy.openai_completion({"model": LLM, "prompt": "Hi", "max_tokens": 2}, CTX)
        assert isinstance(result, dict)
    finally:
        await broken.close()
        await healthy.close()


async def test_close_stops_every_worker() -> None:
    provider = await _provider()
    worker = provider._supervisors[LLM].worker
    assert worker is not None
    task = asyncio.create_task(provider.openai_completion(_endless(provider), CTX))
    await asyncio.sleep(0.3)
    await provider.close()
    await _wait_gone(worker.pid, 5)
    with pytest.raises(UpstreamUnavailable, match="shutting down"):
        await task


def test_a_worker_never_outlives_its_server(tmp_path: Any) -> None:
    # A server process killed with SIGKILL runs no cleanup at all: its worker must notice.
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from stackd_provider_llama_cpp import spec
        from stackd.convert import structure

        async def main():
            cfg = structure({{"models": [{{"model_id": "m", "n_ctx": 128}}]}}, spec.config_class)
            provider = await spec.factory(cfg, {{}})
            await provider._load_task
            print(provider._supervisors["m"].worker.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        worker_pid = int(server.stdout.readline())
        assert not _gone(worker_pid)
        server.kill()
        server.wait()
        deadline = time.monotonic() + 10
        while not _gone(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived its server"
            time.sleep(0.05)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


async def test_the_event_loop_never_waits_on_a_busy_worker() -> None:
    provider = await _provider()

    async def ticks(until: Callable[[], bool]) -> list[float]:
        gaps: list[float] = []
        last = time.monotonic()
        while not until():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        return gaps

    try:
        stop = asyncio.Event()
        ticker = asyncio.create_task(ticks(stop.is_set))
        started = time.monotonic()
        stream = await provider.openai_completion(_endless(provider, stream=True, max_tokens=60), CTX)
        chunks = [c async for c in stream]  # type: ignore[union-attr]
        busy = time.monotonic() - started
        stop.set()
        gaps = await ticker
        assert len(chunks) >= 60
        # The same ticker with the worker idle, for as long, on the same (possibly loaded) machine.
        end = time.monotonic() + busy
        idle = await ticks(lambda: time.monotonic() >= end)
        # A loop that waited on the worker would stall for the whole generation (~1 s), or for each
        # token (~12 ms of every ~17 ms tick: a third of the idle rate). Single gaps get room for a
        # shared 2-core machine; the tick rate is compared with the idle one, not with a constant.
        assert max(gaps) < 0.5
        assert len(gaps) >= 0.6 * len(idle), (len(gaps), len(idle))
    finally:
        await provider.close()


logging.getLogger("stackd.providers.llama_cpp").setLevel(logging.INFO)
