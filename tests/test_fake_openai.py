"""stackd.testing.fake_openai: the wire format it promises, in a test and as a process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aiohttp
import orjson

from stackd.testing.fake_openai import FakeOpenAI, Fault


async def _sse_payloads(resp: aiohttp.ClientResponse) -> list[bytes]:
    body = await resp.read()
    return [line[6:] for line in body.split(b"\n\n") if line.startswith(b"data: ")]


async def test_chat_stream_wire_format() -> None:
    async with FakeOpenAI(models=("m",), chunks=3) as fake, aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
        async with session.post(f"{fake.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            payloads = await _sse_payloads(resp)
    assert payloads[-1] == b"[DONE]"
    events = [orjson.loads(p) for p in payloads[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:4]] == ["tok0 ", "tok1 ", "tok2 "]
    assert events[4]["choices"][0]["finish_reason"] == "stop"
    assert events[5]["choices"] == []
    assert events[5]["usage"]["completion_tokens"] == 3
    assert fake.requests[0].body == body


async def test_max_tokens_caps_the_answer_and_errors_are_openai_shaped() -> None:
    async with FakeOpenAI(models=("m",), chunks=10) as fake, aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake.url}/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2}
        ) as resp:
            answer = await resp.json()
        assert answer["choices"][0] == {
            "index": 0,
            "text": "tok0 tok1 ",
            "logprobs": None,
            "finish_reason": "length",
        }
        fake.fault = Fault(status=429, message="slow down", error_type="rate_limit_error")
        async with session.post(f"{fake.url}/v1/completions", json={"model": "m", "prompt": "x"}) as resp:
            assert resp.status == 429
            assert await resp.json() == {
                "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": 429}
            }
        # Faults apply to inference routes only, unless asked.
        async with session.get(f"{fake.url}/v1/models") as resp:
            assert resp.status == 200


async def test_runs_as_a_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stackd.testing.fake_openai"),
        *("--port", "0", "--chunks", "64", "--models", "a,b"),
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{match.group(0)}/v1/models") as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["a", "b"]
            body = {"model": "b", "messages": [], "stream": True}
            async with session.post(f"{match.group(0)}/v1/chat/completions", json=body) as resp:
                payloads = await _sse_payloads(resp)
        assert len(payloads) == 64 + 3  # role, 64 tokens, finish, [DONE]
    finally:
        proc.terminate()
        await proc.wait()
