"""What metrics and the access log cost: stackd's CPU per request with both off, with metrics
only, and with metrics and one JSON access line per request, in one run, each target measured in
turn in every round so all three share the machine's state.

    python -m bench.observability           # 3 rounds, non-stream and 64-chunk streams, c=32
    python -m bench.observability --quick   # a smoke run
    python -m bench.observability --micro   # in-process: the middleware's own cost, in µs

Whole-server CPU on a shared 2-core machine moves by more than 0.03 ms between rounds, so
``--micro`` also times the access middleware itself around a handler that returns at once:
bare handler, observation only, metrics, metrics and the JSON line (written to a file).

"off" still keeps each request's observation (its id on every log line); the difference to the
others is what the metrics and the access line add. Access lines go to a file (stderr is not a
terminal, so JSON), as a collector would read them. Target: <= 0.03 ms added per request.
Results go to bench/results/observability-<time>.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from bench import peers
from bench.measure import measure, parse_round_args
from bench.procs import Server, free_port, start_server, start_upstream

__all__ = ["main"]

_RESULTS = Path(__file__).with_name("results")
TARGET_MS = 0.03

# name -> (server settings, log level)
VARIANTS = {
    "off": ("  metrics: {enabled: false}\n  access_log: false\n", "WARNING"),
    "metrics": ("  access_log: false\n", "WARNING"),
    "metrics+log": ("", "INFO"),
}


def _start_stackd(name: str, work: Path, upstream: str) -> Server:
    settings, level = VARIANTS[name]
    directory = work / name
    directory.mkdir()
    config = peers.write_stackd_config(directory, upstream)
    config.write_text(config.read_text() + settings)
    port = free_port()
    env = {**os.environ, "STACKD_HOME": str(directory / "home")}
    argv = peers.stackd_argv(config, port)
    argv[argv.index("--log-level") + 1] = level
    return start_server(name, argv, f"http://127.0.0.1:{port}", "/v1/health", directory / "stackd.log", env=env)


async def _micro_run(n: int, repeats: int) -> dict[str, float]:
    """µs per request that each variant of the access middleware adds to a handler."""
    import logging

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from stackd import logs
    from stackd.server.access import access_middleware
    from stackd.server.client_address import ClientAddresses
    from stackd.server.keys import CLIENT_ADDRESSES
    from stackd.server.live_streams import InFlight

    answer = web.Response(body=b'{"ok": true}', content_type="application/json")

    async def handler(request: web.Request) -> web.StreamResponse:
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app[CLIENT_ADDRESSES] = ClientAddresses.of([])
    request = make_mocked_request("POST", "/v1/chat/completions", app=app,
                                  headers={"X-Request-ID": "bench-request-id"})
    info = await app.router.resolve(request)  # the route template and the app, as in a server
    info.add_app(app)
    info.freeze()
    request._match_info = info

    with tempfile.NamedTemporaryFile("w", prefix="stackd-access-", suffix=".log") as out:
        logs.configure("INFO", "json", out)
        sink = logs.access_sink()
        assert sink is not None
        logged = _bound(access_middleware(log_lines=True, count=True, in_flight=InFlight()), handler)
        variants: dict[str, tuple[Any, int]] = {
            "bare handler": (handler, 0),
            "observation only": (_bound(access_middleware(log_lines=False, count=False, in_flight=InFlight()),
                                        handler), 0),
            "metrics": (_bound(access_middleware(log_lines=False, count=True, in_flight=InFlight()), handler), 0),
            # Lines are written once per event-loop turn: one a turn when idle, many under load.
            "metrics+log, 1 line per write": (logged, 1),
            "metrics+log, 16 lines per write": (logged, 16),
        }
        best = dict.fromkeys(variants, float("inf"))
        # Variants interleaved, the best of each kept: a neighbour's burst hits all of them alike.
        for _ in range(repeats):
            for name, (call, every) in variants.items():
                async def many(call: Any = call, every: int = every) -> None:
                    for i in range(n):
                        await call(request)
                        if every and i % every == every - 1:
                            sink.flush()  # type: ignore[attr-defined]
                best[name] = min(best[name], _timed(many) / n * 1e6)
        logging.getLogger().handlers.clear()
    return best


def _bound(middleware: Any, handler: Any) -> Any:
    async def call(request: Any) -> Any:
        return await middleware(request, handler)
    return call


def _timed(many: Any) -> float:
    """Seconds to run ``many()``: nothing in it waits, so one step drives it to the end with no
    event loop turn counted."""
    coro = many()
    start = time.perf_counter()
    try:
        coro.send(None)
    except StopIteration:
        pass
    else:
        raise RuntimeError("the timed batch waited on something")
    return time.perf_counter() - start


def micro(n: int = 10000, repeats: int = 15) -> dict[str, Any]:
    best = asyncio.run(_micro_run(n, repeats))
    bare = best["bare handler"]
    # The same machine's speed at the time, for comparing runs: a bare clock read.
    clock = min(timeit.repeat(time.perf_counter, number=100_000, repeat=repeats)) / 100_000 * 1e6
    return {"us_per_request": best,
            "added_us": {name: value - bare for name, value in best.items() if name != "bare handler"},
            "perf_counter_call_us": clock, "load_average": os.getloadavg(),
            "n": n, "repeats": repeats, "statistic": "minimum of repeats"}


def main(argv: list[str] | None = None) -> int:
    args = parse_round_args(__doc__, argv, lambda parser: parser.add_argument(
        "--micro", action="store_true", help="only the in-process timing of the middleware"))
    if args.micro:
        print(json.dumps(micro(), indent=2))
        return 0

    names = list(VARIANTS)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stackd-bench-obs-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            upstream = start_upstream(work)
            servers.append(upstream)
            targets = {name: _start_stackd(name, work, upstream.url) for name in names}
            servers += targets.values()
            for r in range(args.rounds):
                for stream in (False, True):
                    # Each round starts with another target, so none always runs on the warmest machine.
                    for name in names[r % 3:] + names[:r % 3]:
                        results.append(measure(targets[name], upstream, args, stream=stream) | {"round": r})
                        print(json.dumps(results[-1]), flush=True)
            lines = (work / "metrics+log" / "stackd.log").read_text().count('"logger":"stackd.access"')
        finally:
            for server in reversed(servers):
                server.stop()
    summary: dict[str, Any] = {"access_lines_written": lines}
    for mode in ("non-stream", "stream"):
        runs = {name: [x["server_cpu_ms_per_req"] for x in results if x["target"] == name and x["mode"] == mode]
                for name in names}
        median = {name: statistics.median(v) for name, v in runs.items()}
        summary[mode] = {
            "median_server_cpu_ms_per_req": median,
            "spread_ms": {name: [min(v), max(v)] for name, v in runs.items()},
            "added_ms": {name: median[name] - median["off"] for name in ("metrics", "metrics+log")},
        }
    summary["target_added_ms"] = TARGET_MS
    summary["note"] = "one run on a shared 2-core machine: compare the targets of this run, not runs of other days"
    print(json.dumps(summary, indent=2))
    _RESULTS.mkdir(exist_ok=True)
    out = _RESULTS / f"observability-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
