"""The fake Ollama runs as a process too (for examples and benchmarks)."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson


async def test_fake_ollama_as_a_process(closed_port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stackd_provider_ollama.fake",
        "--port",
        str(closed_port),
        "--model",
        "tiny:1b",
        "--model",
        "embedder=4",
        "--reply",
        "hi there",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = f"http://127.0.0.1:{closed_port}"
        assert line.decode().strip() == f"fake ollama listening on {url}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/api/tags") as resp:
                names = [m["name"] for m in (await resp.json())["models"]]
            async with session.post(
                f"{url}/api/chat", json={"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}]}
            ) as resp:
                assert resp.content_type == "application/x-ndjson"
                lines = [orjson.loads(raw) for raw in (await resp.read()).splitlines()]
            async with session.post(f"{url}/api/embed", json={"model": "embedder", "input": "x"}) as resp:
                dims = len((await resp.json())["embeddings"][0])
        assert names == ["tiny:1b", "embedder:latest"]
        assert "".join(obj["message"]["content"] for obj in lines) == "hi there"
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
        assert dims == 4
    finally:
        proc.terminate()
        await proc.wait()
