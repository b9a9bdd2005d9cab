"""stackd.client over TCP against a real ``stackd serve`` process, and examples/client_chat.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stackd.client import BadRequest, StackClient
from stackd.testing.fake_openai import FakeOpenAI

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

__all__: list[str] = []

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "client_chat.py"
USER = [{"role": "user", "content": "one two three"}]


async def serve(stackd_serve: Callable[..., Any], config: Path, port: Callable[[], int]) -> str:
    proc = stackd_serve(str(config), "--port", str(port()))
    return str(await asyncio.to_thread(proc.wait_serving))


async def test_client_over_tcp(stackd_serve: Callable[..., Any], echo_config: Path, port: Callable[[], int]) -> None:
    base = await serve(stackd_serve, echo_config, port)
    async with StackClient(base) as c:
        assert (await c.health()).status == "OK"
        assert c.server_version == "0.1.0"  # the version check ran before the first call
        assert {m.identifier for m in await c.list_models()} >= {"echo-1", "echo-embed"}
        answer = await c.chat_completion("echo-1", USER)
        assert answer.completion_message.content == "one two three"
        async with await c.openai_chat("echo-1", USER, stream=True) as stream:
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text == "one two three"
        assert len((await c.openai_embeddings("echo-embed", "x")).data[0].embedding) == 8
        with pytest.raises(BadRequest) as info:
            await c.openai_chat("echo-1", [])
        assert info.value.errors[0].loc == "$.messages"


async def test_early_close_over_tcp_cancels_the_upstream(
    stackd_serve: Callable[..., Any], port: Callable[[], int], tmp_path: Path
) -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=500, chunk_delay=0.02) as fake:
        config = tmp_path / "vllm.yaml"
        config.write_text(f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{fake.url}/v1"}}
metadata_store: {{type: sqlite, db_path: {tmp_path}/registry.db}}
inference_store: {{type: sqlite, db_path: {tmp_path}/store.db}}
models:
- model_id: chat
  provider_model_id: fake-model
""")
        base = await serve(stackd_serve, config, port)
        async with StackClient(base) as c:
            async with await c.chat_completion("chat", USER, stream=True) as stream:
                assert (await anext(stream)).event.event_type == "start"
                await anext(stream)
            await asyncio.wait_for(fake.disconnected.wait(), timeout=30)
            assert fake.disconnects == 1


async def test_client_chat_example(stackd_serve: Callable[..., Any], echo_config: Path,
                                   port: Callable[[], int]) -> None:
    base = await serve(stackd_serve, echo_config, port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), base, "echo-1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"Name three colours.\nred green blue\n\n"), timeout=60)
    assert proc.returncode == 0, err.decode()
    # The echo model says the last user message back, streamed word by word.
    assert out.decode().splitlines() == ["Name three colours.", "red green blue"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), base, "no-such-model",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"hello\n"), timeout=60)
    assert proc.returncode == 1
    assert err.decode().startswith("error: HTTP 404: ") and "Traceback" not in err.decode()
