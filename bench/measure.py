"""One measured load phase: the load generator's warm-up, then CPU read from /proc exactly
around the measured requests (used by the auth and quota benchmarks)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import peers
from bench.procs import Server, cpu_seconds

__all__ = ["measure", "parse_round_args"]

_LOADGEN = Path(__file__).with_name("loadgen.py")


def measure(server: Server, upstream: Server, args: argparse.Namespace, token: str | None = None) -> dict[str, Any]:
    """One measured phase of non-stream chat completions against ``server`` (after a warm-up):
    throughput, p50 and the CPU per request of ``server`` and of the upstream, from /proc."""
    argv = [sys.executable, str(_LOADGEN), "--url", f"{server.url}/v1/chat/completions", "--model", peers.MODEL_ID,
            "--concurrency", str(args.concurrency), "--requests", str(args.requests),
            "--max-seconds", str(args.max_seconds), "--warmup", str(args.warmup)]
    if token:
        argv += ["--bearer", token]
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        warm = json.loads(gen.stdout.readline() or "{}")
        if not warm.get("ok") or warm.get("errors"):
            raise RuntimeError(f"{server.name}: the warm-up failed: {warm}\n{server.log_tail()}")
        srv0, up0 = cpu_seconds(server.pid), cpu_seconds(upstream.pid)
        gen.stdin.write("go\n")
        gen.stdin.flush()
        done = json.loads(gen.stdout.readline() or "{}")
        srv1, up1 = cpu_seconds(server.pid), cpu_seconds(upstream.pid)
        gen.wait(timeout=30)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    ok = int(done.get("ok") or 0)
    if not ok or done.get("errors"):
        raise RuntimeError(f"{server.name}: {done}")
    return {"target": server.name, "ok": ok, "rps": done["rps"], "p50_ms": done["p50_ms"],
            "server_cpu_ms_per_req": (srv1 - srv0) * 1000 / ok, "upstream_cpu_ms_per_req": (up1 - up0) * 1000 / ok}


def parse_round_args(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The options of a benchmark that measures its targets in turn for ``--rounds`` rounds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.warmup = 1, 300, 64
    return args
