"""Call stackd from plain aiohttp: a chat completion, then the same as a stream.

    python examples/client_aiohttp.py [http://localhost:8321] [model]
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def main(base: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 48}
    async with aiohttp.ClientSession(base) as session:
        async with session.post("/v1/chat/completions", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status}: {answer['error']['message']}")
            print(answer["choices"][0]["message"]["content"])

        async with session.post("/v1/chat/completions", json={**body, "stream": True}) as resp:
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise SystemExit(chunk["error"]["message"])
                for choice in chunk["choices"]:
                    print(choice["delta"].get("content") or "", end="", flush=True)
            print()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8321",
                     sys.argv[2] if len(sys.argv) > 2 else "gemma3-270m"))
