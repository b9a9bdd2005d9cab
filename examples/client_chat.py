"""A streaming chat with stackd.client: type a line, watch the answer arrive; an empty line ends.

    python examples/client_chat.py [http://localhost:8321] [model]

STACKD_TOKEN is sent as the bearer token when set. Questions may also come on stdin
(``echo "Name three colours." | python examples/client_chat.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from stackd.client import ApiError, QuotaExceeded, Retry, StackClient


async def main(base: str, model: str) -> None:
    history: list[dict[str, Any]] = []
    # Retry 429 and 503 (a model still loading) when the server says how long to wait.
    async with StackClient(base, token=os.environ.get("STACKD_TOKEN"), retry=Retry(max_wait=20)) as client:
        for line in sys.stdin:
            question = line.strip()
            if not question:
                break
            history.append({"role": "user", "content": question})
            answer = []
            try:
                stream = await client.openai_chat(model, history, stream=True, max_tokens=256)
                async with stream:
                    async for chunk in stream:
                        for choice in chunk.choices:
                            text = choice.delta.content or ""
                            answer.append(text)
                            print(text, end="", flush=True)
            except QuotaExceeded as exc:
                raise SystemExit(f"quota used up; it resets in {exc.retry_after} s") from None
            except ApiError as exc:
                raise SystemExit(f"error: {exc}") from None
            print()
            history.append({"role": "assistant", "content": "".join(answer)})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8321",
                     sys.argv[2] if len(sys.argv) > 2 else "gemma3-270m"))
