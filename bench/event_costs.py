"""What one streamed event costs each step of stackd's stream path, in instructions (callgrind).

    python -m bench.event_costs                 # 64-event reads, the model relabelled
    python -m bench.event_costs --events 1      # one event per read (a real model's pace)

Each step runs in a child Python under ``valgrind --tool=callgrind`` twice, with two loop counts,
instrumented only around its loop; the difference over the extra events is the step's cost per
event. The events are the fake upstream's 64-chunk answer (``stackd.testing.fake_openai``'s shape,
one token each). Exact and independent of the machine's load, unlike CPU time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

_HEAD = {"id": "chatcmpl-0000000000000001", "object": "chat.completion.chunk", "created": 1700000000,
         "model": "fake-model"}

STEPS = {
    "loop": "a Python loop calling len() per event: the floor of a step per event",
    "orjson.loads": "each payload parsed on its own (what validation and the store need)",
    "read-lines": "the line-by-line reader (_Lines.feed + _events_of): split, check, parse",
    "read-whole": "the whole-read reader (_whole_events): counts over the read, parse",
    "copy": "a shallow copy of each event (the frames steps relabel fresh copies): subtract it from theirs",
    "frames-lines": "Relabelled.frames event by event: relabel on the bytes, usage, no store (+ copy)",
    "frames-whole": "Relabelled.frames on a whole read: one replace, usage, no store (+ copy)",
    "fold": "ChatStreamAssembler.add per chunk (the inference store's share of a stream)",
}


def _block(events: int) -> bytes:
    import orjson

    chunks = [{**_HEAD, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
              for i in range(events)]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)


def _step(name: str, block: bytes) -> Callable[[], Any]:
    import orjson

    from stackd.inference_store.assemble import ChatStreamAssembler
    from stackd.relabel import Relabelled
    from stackd.upstream import _events_of, _Lines, _whole_events

    payloads = block[6:-2].split(b"\n\ndata: ")
    events = [orjson.loads(p) for p in payloads]
    limit = 1 << 20
    if name == "loop":
        return lambda: [len(e) for e in events]
    if name == "orjson.loads":
        return lambda: list(map(orjson.loads, payloads))
    if name == "read-lines":
        return lambda: _events_of(_Lines(None, "bench", limit).feed(block), "bench")  # type: ignore[arg-type]
    if name == "read-whole":
        return lambda: _whole_events(block, limit)
    if name == "copy":
        return lambda: [dict(e) for e in events]
    if name in ("frames-lines", "frames-whole"):
        # Relabelling sets each event's "model": every round gets fresh copies, or later rounds
        # would find nothing to relabel.
        relabelled = Relabelled(_nothing(), "bench-llm", None, limit)
        upstream = block if name == "frames-whole" else None
        return lambda: relabelled.frames(payloads, [dict(e) for e in events], upstream)  # type: ignore[arg-type]
    if name == "fold":
        def fold() -> None:
            add = ChatStreamAssembler(limit).add
            for event in events:
                add(event)
        return fold
    raise SystemExit(f"unknown step {name!r}: one of {', '.join(STEPS)}")


async def _nothing() -> Any:
    return
    yield


def _child(name: str, events: int, loops: int) -> None:
    step = _step(name, _block(events))
    _instrument("on")  # imports and set-up are not counted (nor run at callgrind's slowest)
    for _ in range(loops):
        step()
    _instrument("off")


def _instrument(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


def _instructions(name: str, events: int, loops: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={Path(tmp) / 'cg.out'}",
             sys.executable, "-m", "bench.event_costs", "--child", name, "--events", str(events),
             "--loops", str(loops)],
            capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no total for {name}:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.event_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=64, help="events per read")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated: " + ", ".join(STEPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.events, args.loops)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"python -m bench.event_costs needs {' and '.join(missing)} on PATH: "
                         "apt-get install -y valgrind")
    few, many = 50, 50 + 10_000 // args.events
    print(f"| step ({args.events} events per read) | instructions per event | what |")
    print("|---|---|---|")
    for name in args.steps.split(","):
        extra = _instructions(name, args.events, many) - _instructions(name, args.events, few)
        print(f"| {name} | {extra / ((many - few) * args.events):,.0f} | {STEPS[name]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
