"""Throughput with ``server.workers: 2`` against one worker, and how the two ways of sharing the
port spread the load (docs/deployment.md, docs/benchmarks.md).

    python -m bench.workers                    # 3 rounds, non-stream chat at c=128, ~3 minutes
    python -m bench.workers --quick            # a smoke run
    python -m bench.workers --backend echo     # stackd alone (the inline echo test provider), no upstream

Three stackd servers run side by side: one worker, two workers with SO_REUSEPORT (each worker
its own socket) and two workers on one shared socket. Every round measures each in turn
(starting with another one each round), with the load generator in its own process(es). For
each: requests per second, latency, CPU of every process, and how the connections and the
CPU split between the workers. Results go to bench/results/workers-<time>.json.

On a 2-core machine the load generator and the upstream share the cores with stackd: the
ratio of two workers to one is bounded by what they leave, which the CPU columns show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import peers
from bench.procs import Server, cpu_seconds, free_port, start_server, start_upstream

__all__ = ["main"]

_LOADGEN = Path(__file__).with_name("loadgen.py")
_RESULTS = Path(__file__).with_name("results")
VARIANTS = {"1 worker": (1, "reuseport"), "2 workers, reuseport": (2, "reuseport"), "2 workers, shared": (2, "shared")}

_ECHO_CONFIG = """version: 2
image_name: bench
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [{model}]}}
metadata_store: {{type: sqlite, db_path: {directory}/stackd/registry.db}}
inference_store: {{type: sqlite, db_path: {directory}/stackd/inference_store.db}}
models:
- model_id: {model}
server:
  host: 127.0.0.1
"""


def workers_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def connections_per_worker(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to ``port`` held by each worker (from /proc/net/tcp and each one's fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    counts = {}
    for pid in pids:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
            except OSError:
                continue
        counts[pid] = n
    return counts


def _start(name: str, work: Path, backend: str, upstream: str | None, workers: int, mode: str) -> Server:
    directory = work / name.replace(" ", "-").replace(",", "")
    directory.mkdir()
    if backend == "echo":
        config = directory / "stackd-bench.yaml"
        config.write_text(_ECHO_CONFIG.format(model=peers.MODEL_ID, directory=directory))
    else:
        assert upstream is not None
        config = peers.write_stackd_config(directory, upstream)
    port = free_port()
    env = {**os.environ, "STACKD_HOME": str(directory / "home"), "STACKD_WORKER_SOCKETS": mode}
    argv = [*peers.stackd_argv(config, port), "--workers", str(workers)]
    server = start_server(name, argv, f"http://127.0.0.1:{port}", "/v1/health", directory / "stackd.log", env=env)
    deadline = time.monotonic() + 60
    while " serving " not in server.log_path.read_text(errors="replace"):  # every worker is up
        if time.monotonic() > deadline or not server.alive():
            raise RuntimeError(f"{name} did not announce itself:\n{server.log_tail()}")
        time.sleep(0.05)
    return server


def _measure(server: Server, upstream: Server | None, args: argparse.Namespace) -> dict[str, Any]:
    per_gen = args.concurrency // args.loadgens
    gens = [subprocess.Popen(
        [sys.executable, str(_LOADGEN), "--url", f"{server.url}/v1/chat/completions", "--model", peers.MODEL_ID,
         "--concurrency", str(per_gen), "--requests", str(args.requests // args.loadgens),
         "--max-seconds", str(args.max_seconds), "--warmup", str(max(args.warmup // args.loadgens, per_gen))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(args.loadgens)]
    try:
        for gen in gens:
            assert gen.stdout is not None
            warm = json.loads(gen.stdout.readline() or "{}")
            if not warm.get("ok") or warm.get("errors"):
                raise RuntimeError(f"{server.name}: the warm-up failed: {warm}\n{server.log_tail()}")
        workers = workers_of(server.pid) or [server.pid]
        port = int(server.url.rsplit(":", 1)[1])
        conns = connections_per_worker(workers, port)
        pids = list(dict.fromkeys([server.pid, *workers, *([upstream.pid] if upstream else []),
                                   *(g.pid for g in gens)]))
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        for gen in gens:
            assert gen.stdin is not None
            gen.stdin.write("go\n")
            gen.stdin.flush()
        done = [json.loads(gen.stdout.readline() or "{}") for gen in gens if gen.stdout is not None]
        cpu1 = {pid: cpu_seconds(pid) for pid in pids}
        for gen in gens:
            gen.wait(timeout=30)
    finally:
        for gen in gens:
            if gen.poll() is None:
                gen.kill()
                gen.wait()
    ok = sum(int(d.get("ok") or 0) for d in done)
    if not ok or any(d.get("errors") for d in done):
        raise RuntimeError(f"{server.name}: {done}\n{server.log_tail()}")
    seconds = max(float(d["seconds"]) for d in done)
    cores = {pid: (cpu1[pid] - cpu0[pid]) / seconds for pid in pids}
    worker_cores = [cores[pid] for pid in workers]
    return {
        "target": server.name,
        "ok": ok,
        "rps": sum(float(d["rps"]) for d in done),
        "p50_ms": statistics.median(float(d["p50_ms"]) for d in done),
        "p99_ms": max(float(d["p99_ms"]) for d in done),
        "connections_per_worker": [conns[pid] for pid in workers],
        "worker_cpu_cores": worker_cores,
        "stackd_cpu_ms_per_req": sum(cpu1[p] - cpu0[p] for p in {server.pid, *workers}) * 1000 / ok,
        "supervisor_cpu_cores": cores[server.pid] if workers != [server.pid] else 0.0,
        "upstream_cpu_cores": cores[upstream.pid] if upstream else 0.0,
        "loadgen_cpu_cores": sum(cores[g.pid] for g in gens),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--requests", type=int, default=40000, help="per measurement (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--loadgens", type=int, default=1, help="load generator processes sharing the concurrency")
    parser.add_argument("--backend", choices=["vllm", "echo"], default="vllm",
                        help="vllm: remote::vllm in front of the fake upstream; echo: stackd alone")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.warmup, args.max_seconds = 1, 2000, 200, 3.0

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stackd-bench-workers-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            upstream = None
            if args.backend == "vllm":
                upstream = start_upstream(work)
                servers.append(upstream)
            targets = {}
            for name, (workers, mode) in VARIANTS.items():
                targets[name] = _start(name, work, args.backend, upstream.url if upstream else None, workers, mode)
                servers.append(targets[name])
            names = list(targets)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    results.append(_measure(targets[name], upstream, args) | {"round": r})
                    print(json.dumps(results[-1]), flush=True)
        finally:
            for server in reversed(servers):
                server.stop()
    rps = {name: [x["rps"] for x in results if x["target"] == name] for name in VARIANTS}
    summary = {
        "median_rps": {name: statistics.median(v) for name, v in rps.items()},
        "rps_range": {name: [min(v), max(v)] for name, v in rps.items()},
        "ratio_to_one_worker": {name: statistics.median(v) / statistics.median(rps["1 worker"])
                                for name, v in rps.items()},
        "per_round_ratio": {name: [a / b for a, b in zip(v, rps["1 worker"], strict=True)] for name, v in rps.items()},
        "args": vars(args),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    _RESULTS.mkdir(exist_ok=True)
    out = _RESULTS / f"workers-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
