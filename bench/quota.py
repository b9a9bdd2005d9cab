"""What quota costs: stackd's CPU per request with no quota and with quota counted on SQLite,
Redis and PostgreSQL (throwaway servers started here), in one run, each target measured in turn
in every round so all share the machine's state.

    python -m bench.quota              # 3 rounds of non-stream chat completions at c=32
    python -m bench.quota --quick      # a smoke run

The limit is far above the load, so every request is counted and admitted. CPU is the stackd
process's own (utime + stime); a Redis or PostgreSQL server's CPU is reported beside it but not
added. The machine is shared: compare the targets of one run. Target: <= 0.1 ms added per
request on SQLite. Results go to bench/results/quota-<time>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import peers
from bench.measure import measure, parse_round_args
from bench.procs import Server, cpu_seconds, free_port, start_server, start_upstream
from stackd.testing.stores import PgServer, RedisServer, start_postgres, start_redis

__all__ = ["main"]

_RESULTS = Path(__file__).with_name("results")
TARGET_SQLITE_MS = 0.1
_LIMIT = 1_000_000_000


def _start_stackd(name: str, work: Path, upstream: str, store: str) -> Server:
    directory = work / name
    directory.mkdir()
    config = peers.write_stackd_config(directory, upstream)
    if store:
        config.write_text(config.read_text() + f"  quota:\n    kvstore: {store}\n"
                          f"    anonymous_max_requests: {_LIMIT}\n")
    port = free_port()
    env = {**os.environ, "STACKD_HOME": str(directory / "home")}
    return start_server(name, peers.stackd_argv(config, port), f"http://127.0.0.1:{port}", "/v1/health",
                        directory / "stackd.log", env=env)


def _store_pids(redis: RedisServer, pg: PgServer) -> dict[str, list[int]]:
    """The processes of each store server (PostgreSQL: the postmaster and its backends)."""
    pg_pid = int((pg.base / "data" / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{pg_pid}/task/{pg_pid}/children")
    backends = [int(p) for p in children.read_text().split()] if children.exists() else []
    assert redis.proc is not None
    return {"redis": [redis.proc.pid], "postgres": [pg_pid, *backends]}


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that ended
            total += cpu_seconds(pid)
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_round_args(__doc__, argv)

    redis, pg = start_redis(), start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="stackd-bench-quota-") as tmp:
            work = Path(tmp)
            servers: list[Server] = []
            try:
                upstream = start_upstream(work)
                servers.append(upstream)
                stores = {
                    "no-quota": "",
                    "sqlite": f"{{type: sqlite, db_path: {work / 'quota.db'}}}",
                    "redis": redis.yaml(),
                    "postgres": pg.yaml(),
                }
                targets = {name: _start_stackd(name, work, upstream.url, store) for name, store in stores.items()}
                servers += targets.values()
                store_pids = _store_pids(redis, pg)
                results: list[dict[str, Any]] = []
                names = list(targets)
                for r in range(args.rounds):
                    # Each round starts with another target, so none always runs on the warmest machine.
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        pids = store_pids.get(name, [])
                        before = _cpu(pids)
                        result = measure(targets[name], upstream, args) | {"round": r}
                        if pids:  # includes the warm-up: an upper bound of the store's share
                            result["store_cpu_ms_per_req_upper"] = (_cpu(pids) - before) * 1000 / result["ok"]
                        results.append(result)
                        print(json.dumps(result), flush=True)
            finally:
                for server in reversed(servers):
                    server.stop()
    finally:
        redis.remove()
        pg.remove()
    cpu = {name: [x["server_cpu_ms_per_req"] for x in results if x["target"] == name] for name in targets}
    median = {name: statistics.median(v) for name, v in cpu.items()}
    summary = {
        "median_server_cpu_ms_per_req": median,
        "spread_server_cpu_ms_per_req": {name: [min(v), max(v)] for name, v in cpu.items()},
        "added_ms": {name: median[name] - median["no-quota"] for name in ("sqlite", "redis", "postgres")},
        "target_added_ms_sqlite": TARGET_SQLITE_MS,
        "note": "one run on a shared 2-core machine: compare the targets of this run, not runs of other days",
    }
    print(json.dumps(summary, indent=2))
    _RESULTS.mkdir(exist_ok=True)
    out = _RESULTS / f"quota-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results, "summary": summary}, indent=2))
    return 0 if summary["added_ms"]["sqlite"] <= TARGET_SQLITE_MS else 1


if __name__ == "__main__":
    sys.exit(main())
