"""Issue #10 item 2 in a real ``stackd serve`` process: a hostile upstream's huge answers do not
become stackd's memory. Peak RSS (VmHWM) is read from /proc before and after the attacks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stackd.testing.fake_openai import FakeOpenAI, Fault

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")

MiB = 1024 * 1024
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_huge_upstream_answers_do_not_become_memory(tmp_path: Path, stackd_serve: Callable[..., Any]) -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=8, unique_ids=True) as fake:
        config = tmp_path / "run.yaml"
        config.write_text(f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{fake.url}", timeout: 30}}
metadata_store: {{type: sqlite, db_path: {tmp_path}/registry.db}}
inference_store: {{type: sqlite, db_path: {tmp_path}/store.db}}
models:
- model_id: chat
  provider_model_id: fake-model
server:
  port: 0
  max_upstream_body_bytes: {4 * MiB}
""")
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:

            async def post(body: dict[str, Any]) -> tuple[int, bytes]:
                async with client.post(url + "/v1/chat/completions", json=body) as resp:
                    return resp.status, await resp.read()

            for body in (CHAT, {**CHAT, "stream": True}):  # warm up: imports, pools, the store
                assert (await post(body))[0] == 200
            before = peak_rss(proc.proc.pid)

            # A 512 MiB answer, announced and not: refused at the header, or at 4 MiB.
            for announce in (True, False):
                fake.fault = Fault(huge=512 * MiB, announce_length=announce)
                status, _ = await post(CHAT)
                assert status == 502
            # A 64 MiB stream line (the limit is 1 MiB): one error frame.
            fake.fault = Fault(huge=64 * MiB)
            status, raw = await post({**CHAT, "stream": True})
            assert status == 200 and b"max_upstream_line_bytes" in raw
            # A 100 000-chunk stream: answered whole; its store copy stops at 4 MiB and is dropped.
            fake.fault, fake.chunks = None, 100_000
            status, raw = await post({**CHAT, "stream": True})
            assert status == 200 and raw.endswith(b"data: [DONE]\n\n") and raw.count(b"\n\n") == 100_003

            after = peak_rss(proc.proc.pid)
        proc.stop()
    assert after - before < 48 * MiB, f"peak RSS grew by {(after - before) / MiB:.0f} MiB"
    assert "not stored: it passed server.max_stored_completion_bytes" in proc.output()
