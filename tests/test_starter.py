"""The quick start as a user meets it: `stackd serve` with no config serves the embedded starter.

A real process, the real bundled model (Gemma 3 270M through llama.cpp), real clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by tox and .ci/run")
pytest.importorskip("stackd_provider_llama_cpp", reason="the inline::llama-cpp plugin is installed by tox")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    home = tmp_path_factory.mktemp("stackd-home")
    port = _free_port()
    env = {**os.environ, "STACKD_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackd.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    seen_loading = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"stackd exited early:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                resp = httpx.get(f"{base}/v1/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if resp.status_code == 200:
                break
            assert resp.status_code == 503 and "loading" in resp.json()["message"]
            seen_loading = True
            time.sleep(0.05)
        else:
            raise AssertionError("the starter did not become healthy in 120 s")
        yield base, (["loading"] if seen_loading else [])
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
        assert "Traceback" not in output, output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_starter_chat_completion_and_stream(starter: tuple[str, list[str]]) -> None:
    from openai import OpenAI

    base, _ = starter
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    models = {m.id for m in client.models.list()}
    assert models == {"gemma3-270m", "gemma3-270m-embed"}

    answer = client.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 12

    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="gemma3-270m", messages=[{"role": "user", "content": "Count to five."}], max_tokens=16,
            stream=True,
        )
        if chunk.choices
    ]
    assert len(pieces) > 2 and "".join(pieces)


def test_starter_completion_and_embeddings(starter: tuple[str, list[str]]) -> None:
    from openai import OpenAI

    base, _ = starter
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    text = client.completions.create(model="gemma3-270m", prompt="The sky is", max_tokens=8)
    assert text.choices[0].text
    vectors = client.embeddings.create(model="gemma3-270m-embed", input=["hello", "world"])
    assert [len(v.embedding) for v in vectors.data] == [640, 640]


def test_starter_native_route(starter: tuple[str, list[str]]) -> None:
    base, _ = starter
    resp = httpx.post(f"{base}/v1/inference/chat-completion", timeout=60, json={
        "model_id": "gemma3-270m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 8},
    })
    assert resp.status_code == 200
    message = resp.json()["completion_message"]
    assert message["role"] == "assistant" and message["stop_reason"] in ("end_of_turn", "out_of_tokens")


def test_starter_answers_concurrent_requests(starter: tuple[str, list[str]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    base, _ = starter

    def one(i: int) -> int:
        body: dict[str, object] = {"model": "gemma3-270m", "max_tokens": 6, "stream": i % 2 == 0,
                                   "messages": [{"role": "user", "content": f"Say the number {i}."}]}
        resp = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        if body["stream"]:
            assert resp.text.rstrip().endswith("data: [DONE]")
        return resp.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(one, range(8))) == [200] * 8
    # The server is still healthy and answers after the burst.
    assert httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
