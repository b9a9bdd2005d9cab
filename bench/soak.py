"""Soak test: stackd under sustained, mixed, partly misbehaving load, watched for leaks.

    python -m bench.soak                         # 3 min at c=32, then 1 min at c=128
    python -m bench.soak --minutes 1 --concurrency 32
    python -m bench.soak --minutes 3 --concurrency 32,128 --later-minutes 1

Starts the fake upstream and ``stackd serve`` (``remote::vllm``, SQLite stores in a temporary
directory, as ``bench/run.py`` does, plus an embedding model) and drives the traffic mix of
``bench/soak_traffic.py`` from this process. Every ``--interval`` seconds it samples stackd
from /proc: RSS, open fds, threads, TCP connections to the upstream (stackd's own sockets,
matched by inode), CPU, and the outcomes of the requests since the last sample. After the
load it waits past the connection pool's keep-alive (15 s) and samples once more, then stops
stackd (which flushes the store) and checks that every completion id stackd answered is in
its SQLite store. Prints a table and a verdict; JSON in bench/results/soak-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import peers
from bench.procs import Server, cpu_seconds, free_port, peak_rss_mb, rss_mb, start_server
from bench.soak_traffic import EXPECTED, Traffic, run_phase

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent
EMBED_MODEL = "bench-embed"
_FAKE_EMBED = "fake-embed"
# aiohttp's pool closes a connection idle for 15 s on a 15 s timer: gone within ~30 s.
_IDLE_WAIT = 35.0
# Bounds of the verdict (why these values: docs/benchmarks.md, "Soak").
WARMUP_SECONDS = 30.0
RSS_GROWTH_MB = 8.0
FD_SLACK = 16
UPSTREAM_SLACK = 8
_TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait"}


def write_config(directory: Path, upstream_url: str) -> Path:
    """bench/run.py's config (peers.write_stackd_config) plus an embedding model."""
    path = peers.write_stackd_config(directory, upstream_url)
    text = path.read_text()
    embed = (f"- model_id: {EMBED_MODEL}\n  provider_id: vllm\n  provider_model_id: {_FAKE_EMBED}\n"
             f"  model_type: embedding\n  metadata: {{embedding_dimension: 8}}\n")
    path.write_text(text.replace("models:\n", "models:\n" + embed, 1))
    return path


# -- /proc ------------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> tuple[int, set[str]]:
    fds = 0
    inodes: set[str] = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return fds, inodes


def _tcp_rows(pid: int) -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every TCP socket in the process's namespace."""
    rows = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], f[9]))
    return rows


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def probe(pid: int, upstream_port: int, server_port: int) -> dict[str, Any]:
    fds, inodes = _socket_inodes(pid)
    upstream: Counter[str] = Counter()
    clients = 0
    time_wait_upstream = 0
    for local, remote, state, inode in _tcp_rows(pid):
        if remote == upstream_port:
            if inode in inodes:
                upstream[_TCP_STATES.get(state, state)] += 1
            elif state == "06":  # closed by stackd recently: churn, not reuse
                time_wait_upstream += 1
        elif local == server_port and inode in inodes and state != "0A":
            clients += 1
    return {"rss_mb": rss_mb(pid), "fds": fds, "threads": _threads(pid),
            "upstream_conns": sum(upstream.values()), "upstream_states": dict(upstream),
            "upstream_time_wait": time_wait_upstream, "client_conns": clients, "cpu_s": cpu_seconds(pid)}


# -- the run ----------------------------------------------------------------------------------


async def _sampler(stackd: Server, upstream_port: int, server_port: int, traffic: Traffic,
                   samples: list[dict[str, Any]], phase: dict[str, Any], start: float, interval: float,
                   stop: asyncio.Event) -> None:
    last_t, last_cpu = time.monotonic(), cpu_seconds(stackd.pid)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):  # a timeout is the normal tick
            await asyncio.wait_for(stop.wait(), interval)
        now = time.monotonic()
        sample = probe(stackd.pid, upstream_port, server_port)
        outcomes = dict(traffic.outcomes)
        traffic.outcomes.clear()
        span = now - last_t
        sample.update({
            "t": round(now - start, 1), "phase": phase["name"], "concurrency": phase["concurrency"],
            "cpu_cores": (sample["cpu_s"] - last_cpu) / span if span else 0.0,
            "rps": sum(outcomes.values()) / span if span else 0.0, "outcomes": outcomes,
        })
        last_t, last_cpu = now, sample["cpu_s"]
        samples.append(sample)
        print(_row(sample), flush=True)


async def _drive(args: argparse.Namespace, stackd: Server, upstream: Server, levels: list[int]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Traffic, dict[str, Any]]:
    server_port = int(stackd.url.rsplit(":", 1)[1])
    upstream_port = int(upstream.url.rsplit(":", 1)[1])
    traffic = Traffic(stackd.url, peers.MODEL_ID, EMBED_MODEL)
    baseline = probe(stackd.pid, upstream_port, server_port)
    samples: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    start = time.monotonic()
    print(_HEADER, flush=True)
    for i, c in enumerate(levels):
        minutes = args.minutes if i == 0 else args.later_minutes
        phase = {"name": f"c{c}", "concurrency": c, "seconds": minutes * 60, "t0": round(time.monotonic() - start, 1)}
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            _sampler(stackd, upstream_port, server_port, traffic, samples, phase, start, args.interval, stop))
        phase["sent"] = await run_phase(traffic, c, minutes * 60, seed=args.seed + i)
        stop.set()
        await sampler
        phase["t1"] = round(time.monotonic() - start, 1)
        phases.append(phase)
    # Idle: clients are gone; pooled upstream connections close after the keep-alive.
    await asyncio.sleep(_IDLE_WAIT)
    idle = probe(stackd.pid, upstream_port, server_port)
    idle.update({"t": round(time.monotonic() - start, 1), "phase": "idle", "concurrency": 0, "cpu_cores": 0.0,
                 "rps": 0.0, "outcomes": {}})
    samples.append(idle)
    print(_row(idle), flush=True)
    # A read of every 50th id, over HTTP, while stackd still runs (the rest is checked in SQLite).
    readable = await _read_back(stackd.url, traffic.ids[::50])
    return samples, phases, traffic, {"baseline": baseline, "http_read_back": readable}


async def _read_back(base: str, ids: list[str]) -> dict[str, Any]:
    import aiohttp

    bad: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        sem = asyncio.Semaphore(16)

        async def one(completion_id: str) -> None:
            async with sem, session.get(f"{base}/v1/chat/completions/{completion_id}") as resp:
                data = await resp.read()
                if resp.status != 200 or completion_id.encode() not in data:
                    bad[str(resp.status)] += 1

        await asyncio.gather(*(one(i) for i in ids))
    return {"checked": len(ids), "failed": dict(bad)}


def _stored_ids(db_path: Path) -> set[str]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM chat_completions")}


def _log_summary(path: Path) -> dict[str, Any]:
    """How much stackd logged, how many tracebacks, and the first one in full."""
    lines = path.read_text(errors="replace").splitlines()
    first: list[str] = []
    if "Traceback (most recent call last):" in lines:
        i = lines.index("Traceback (most recent call last):")
        first = lines[max(0, i - 2) : i + 60]
    return {"lines": len(lines), "tracebacks": lines.count("Traceback (most recent call last):"),
            "warnings": sum(" WARNING " in line or line.startswith("WARNING") for line in lines),
            "first_traceback": first, "tail": lines[-10:]}


# -- report -----------------------------------------------------------------------------------

_HEADER = (f"{'t s':>6} {'phase':>6} {'RSS MB':>7} {'fds':>5} {'thr':>4} {'up conn':>7} {'up TW':>6} "
           f"{'clients':>7} {'CPU':>5} {'req/s':>7}  outcomes (non-2xx)")


def _row(s: dict[str, Any]) -> str:
    odd = {k: v for k, v in s["outcomes"].items() if not k.endswith(":200")}
    return (f"{s['t']:6.0f} {s['phase']:>6} {s['rss_mb']:7.1f} {s['fds']:5d} {s['threads']:4d} "
            f"{s['upstream_conns']:7d} {s['upstream_time_wait']:6d} {s['client_conns']:7d} "
            f"{s['cpu_cores']:5.2f} {s['rps']:7.0f}  {odd or ''}")


def _slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


def evaluate(samples: list[dict[str, Any]], phases: list[dict[str, Any]], traffic: Traffic,
             extra: dict[str, Any], stored: set[str] | None) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    fivexx = {k: v for k, v in traffic.totals.items() if k.split(":", 1)[1].startswith("5")}
    check("no 5xx", not fivexx, f"{sum(fivexx.values())} answers with 5xx {fivexx or ''}".strip())
    unexpected = {k: v for k, v in traffic.totals.items() if k.split(":", 1)[1] != EXPECTED[k.split(":", 1)[0]]}
    check("every request had its expected outcome", not unexpected,
          f"{sum(traffic.totals.values())} requests, unexpected: {unexpected or 'none'}")
    baseline = extra["baseline"]
    for phase in phases:
        ps = [s for s in samples if s["phase"] == phase["name"]]
        warm_t = phase["t0"] + min(WARMUP_SECONDS, phase["seconds"] / 3)
        after = [s for s in ps if s["t"] >= warm_t]
        if len(after) >= 2:
            growth = after[-1]["rss_mb"] - after[0]["rss_mb"]
            # Requests answered between the two samples: what a per-request leak would scale with.
            served = sum(sum(s["outcomes"].values()) for s in after[1:])
            per_request = growth * 2**20 / served if served else 0.0
            check(f"{phase['name']}: RSS growth after warm-up < {RSS_GROWTH_MB:g} MB", growth < RSS_GROWTH_MB,
                  f"{after[0]['rss_mb']:.1f} -> {after[-1]['rss_mb']:.1f} MB ({growth:+.1f} MB = {per_request:+.1f} "
                  f"B/request over {served} requests; slope "
                  f"{_slope_mb_per_min([(s['t'], s['rss_mb']) for s in after]):+.2f} MB/min; max "
                  f"{max(s['rss_mb'] for s in after):.1f})")
        c = phase["concurrency"]
        fd_bound = baseline["fds"] + 2 * c + FD_SLACK
        fd_max = max((s["fds"] for s in ps), default=0)
        check(f"{phase['name']}: fds <= start + 2c + {FD_SLACK} = {fd_bound}", fd_max <= fd_bound,
              f"start {baseline['fds']}, max {fd_max}")
        up_max = max((s["upstream_conns"] for s in ps), default=0)
        check(f"{phase['name']}: upstream connections <= c + {UPSTREAM_SLACK}", up_max <= c + UPSTREAM_SLACK,
              f"max {up_max} (TIME_WAIT to upstream, max {max((s['upstream_time_wait'] for s in ps), default=0)})")
    idle = samples[-1]
    check("idle: fds back to start + 4", idle["fds"] <= baseline["fds"] + 4,
          f"start {baseline['fds']}, idle {idle['fds']} (upstream conns {idle['upstream_conns']}, "
          f"client conns {idle['client_conns']})")
    check("idle: threads back to start + 2", idle["threads"] <= baseline["threads"] + 2,
          f"start {baseline['threads']}, idle {idle['threads']}")
    rb = extra["http_read_back"]
    check("stored completions readable over HTTP (every 50th id)", not rb["failed"],
          f"{rb['checked']} read, failed {rb['failed'] or 'none'}")
    if stored is not None:
        missing = [i for i in traffic.ids if i not in stored]
        check("every answered completion id is in the store", not missing,
              f"{len(traffic.ids)} ids answered, {len(stored)} rows, {len(missing)} missing "
              f"{missing[:3] if missing else ''}".strip())
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the first concurrency level")
    parser.add_argument("--later-minutes", type=float, default=1.0, help="length of each later level")
    parser.add_argument("--concurrency", default="32,128", help="comma-separated levels, run in order")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--chunks", type=int, default=64, help="content chunks per upstream answer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/soak-<date>.json")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    if not levels or args.minutes <= 0 or args.later_minutes <= 0 or args.minutes > 60 or args.later_minutes > 60:
        parser.error("give at least one concurrency level and 0 < minutes <= 60")
    out = args.out or _ROOT / "bench" / "results" / f"soak-{time.strftime('%Y-%m-%d-%H%M')}.json"

    with tempfile.TemporaryDirectory(prefix="stackd-soak-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        argv_up = peers.upstream_argv(up_port, args.chunks)
        argv_up[argv_up.index("--models") + 1] = f"{peers.FAKE_MODEL},{_FAKE_EMBED}"
        upstream = start_server("upstream", argv_up, f"http://127.0.0.1:{up_port}", "/health", work / "upstream.log")
        stackd: Server | None = None
        try:
            port = free_port()
            env = {**os.environ, "STACKD_HOME": str(work / "stackd-home")}
            stackd = start_server("stackd", peers.stackd_argv(write_config(work, upstream.url), port),
                                  f"http://127.0.0.1:{port}", "/v1/health", work / "stackd.log", env=env)
            try:
                import uvloop  # the client shares 2 cores with both servers: keep it cheap

                samples, phases, traffic, extra = uvloop.run(_drive(args, stackd, upstream, levels))
            except ImportError:
                samples, phases, traffic, extra = asyncio.run(_drive(args, stackd, upstream, levels))
            extra["peak_rss_mb"] = peak_rss_mb(stackd.pid)
            alive = stackd.alive()
            stackd.stop()  # SIGTERM: stackd flushes its store queue before it exits
            extra["exit_code"] = stackd.proc.returncode
            extra["alive_at_end"] = alive
            log = _log_summary(work / "stackd.log")
            stored = _stored_ids(work / "stackd" / "inference_store.db")
        finally:
            if stackd is not None:
                stackd.stop()
            upstream.stop()

    verdict = evaluate(samples, phases, traffic, extra, stored)
    verdict["checks"].append({"check": "no traceback in stackd's log", "ok": not log["tracebacks"],
                              "detail": f"{log['lines']} log lines, {log['tracebacks']} tracebacks"})
    verdict["ok"] = verdict["ok"] and not log["tracebacks"]
    if not extra["alive_at_end"]:
        verdict["ok"] = False
        verdict["checks"].append({"check": "stackd alive at the end", "ok": False, "detail": "it exited"})
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"minutes": args.minutes, "later_minutes": args.later_minutes, "concurrency": levels,
                     "interval": args.interval, "chunks": args.chunks, "seed": args.seed,
                     "rss_growth_mb": RSS_GROWTH_MB, "warmup_seconds": WARMUP_SECONDS},
        "phases": phases, "samples": samples, "totals": dict(traffic.totals),
        "unexpected_examples": traffic.examples, "ids_answered": len(traffic.ids), "extra": extra,
        "stackd_log": log, "verdict": verdict,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    for c in verdict["checks"]:
        print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['detail']}")
    if traffic.examples:
        print("\nfirst body of each unexpected outcome:")
        for key, body in traffic.examples.items():
            print(f"  {key}: {body[:200]!r}")
    print(f"\nverdict: {'PASS' if verdict['ok'] else 'FAIL'}\nJSON: {out}")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
