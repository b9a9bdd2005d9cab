"""One measured load phase: the load generator's warm-up, then CPU read from /proc exactly
around the measured requests (used by the auth and quota benchmarks)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers
from bench.procs import Server, loadgen_phase

__all__ = ["measure", "parse_round_args"]

_LOADGEN = Path(__file__).with_name("loadgen.py")


def measure(server: Server, upstream: Server, args: argparse.Namespace, token: str | None = None, *,
            stream: bool = False) -> dict[str, Any]:
    """One measured phase of chat completions (streamed with ``stream``) against ``server``, after
    a warm-up: throughput, p50 and the CPU per request of ``server`` and of the upstream, from /proc."""
    argv = [sys.executable, str(_LOADGEN), "--url", f"{server.url}/v1/chat/completions", "--model", peers.MODEL_ID,
            "--concurrency", str(args.concurrency), "--requests", str(args.requests),
            "--max-seconds", str(args.max_seconds), "--warmup", str(args.warmup)]
    if token:
        argv += ["--bearer", token]
    if stream:
        argv.append("--stream")
    done, (srv, up) = loadgen_phase(argv, server, [server.pid, upstream.pid])
    ok = int(done["ok"])
    return {"target": server.name, "mode": "stream" if stream else "non-stream", "ok": ok, "rps": done["rps"],
            "p50_ms": done["p50_ms"],
            "server_cpu_ms_per_req": srv * 1000 / ok, "upstream_cpu_ms_per_req": up * 1000 / ok}


def parse_round_args(doc: str | None, argv: list[str] | None,
                     extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options of a benchmark that measures its targets in turn for ``--rounds`` rounds
    (``extra`` adds a benchmark's own)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.warmup = 1, 300, 64
    return args
