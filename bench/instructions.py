"""Instructions per request under callgrind: a measure of the proxy's work that the neighbours'
load on a shared machine does not move (CPU time on 2 busy cores varies by ±30% run to run).

    python -m bench.instructions                          # stackd and the pass-through
    python -m bench.instructions --baseline /tmp/base     # and stackd from another source tree
    python -m bench.instructions --stackd-config default,no-store,auth-quota

Each server runs under ``valgrind --tool=callgrind --instr-atstart=no``; after its warm-up the
driver switches instrumentation on (``callgrind_control -i on``), the load generator sends a
fixed number of requests, and instrumentation goes off again. Instructions counted in that
window (all threads: the inference store's SQLite thread too) over the successful requests is
the figure. The fake upstream and the load generator run natively. Slow (servers run ~50x
slower under valgrind): keep the counts small; they are exact, not sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import peers
from bench.procs import Server, free_port, start_server, start_upstream

__all__ = ["main"]

_LOADGEN = Path(__file__).with_name("loadgen.py")
_ROOT = Path(__file__).resolve().parent.parent


def _valgrind(out: Path, argv: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]


def _control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


def _total(out: Path, pid: int) -> int:
    """Instructions of every dump of ``pid`` (callgrind writes one file per thread and dump)."""
    total = 0
    for path in out.parent.glob(f"{out.name}*"):
        match = re.search(rb"^totals: (\d+)", path.read_bytes(), re.M)
        if match:
            total += int(match.group(1))
    return total


def _measure(name: str, server: Server, out: Path, model: str, stream: bool, requests: int, concurrency: int,
             bearer: str | None) -> dict[str, Any]:
    argv = [sys.executable, str(_LOADGEN), "--url", f"{server.url}/v1/chat/completions", "--model", model,
            "--concurrency", str(concurrency), "--requests", str(requests), "--max-seconds", "600",
            "--warmup", str(concurrency), "--request-timeout", "600"]
    if stream:
        argv.append("--stream")
    if bearer:
        argv += ["--bearer", bearer]
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        warm = json.loads(gen.stdout.readline() or "{}")
        if not warm.get("ok"):
            raise RuntimeError(f"{name}: the warm-up failed: {warm}")
        for old in out.parent.glob(f"{out.name}*"):
            old.unlink()
        _control(server.pid, "--zero")
        _control(server.pid, "-i", "on")
        gen.stdin.write("go\n")
        gen.stdin.flush()
        done = json.loads(gen.stdout.readline() or "{}")
        _control(server.pid, "-i", "off")
        _control(server.pid, "--dump")
        gen.wait(timeout=60)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    ok = int(done.get("ok", 0))
    if not ok or done.get("errors"):
        raise RuntimeError(f"{name}: {done}")
    deadline = time.monotonic() + 60
    total = 0
    while time.monotonic() < deadline and not (total := _total(out, server.pid)):
        time.sleep(0.5)
    return {"target": name, "mode": "stream" if stream else "non-stream", "requests": ok,
            "instructions_per_request": total / ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--requests-nonstream", type=int, default=400)
    parser.add_argument("--requests-stream", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--token-interval", type=float, default=0.0, metavar="MS",
                        help="the upstream spaces stream events this many ms apart")
    parser.add_argument("--modes", default="non-stream,stream", help="non-stream, stream or both")
    parser.add_argument("--stackd-config", default="default",
                        help="comma-separated: default, no-store, no-log, auth-quota")
    parser.add_argument("--baseline", metavar="TREE", help="also stackd imported from this source tree")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "instructions.json")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.stackd_config.split(",") if v.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stackd-instr-") as tmp:
        work = Path(tmp)
        upstream = start_upstream(work, args.chunks, args.token_interval)
        servers: list[tuple[str, Server, Path, str, str | None]] = []
        try:
            idp_url = None
            if "auth-quota" in variants:
                idp_port = free_port()
                (work / "jwks.json").write_text('{"keys": []}')
                idp_url = f"http://127.0.0.1:{idp_port}"
                idp = start_server("idp", [sys.executable, "-m", "bench.idp", "--port", str(idp_port), "--jwks",
                                           str(work / "jwks.json")], idp_url, "/health", work / "idp.log",
                                   env={**os.environ, "PYTHONPATH": str(_ROOT)})
                servers.append(("idp", idp, work, "", None))
            port = free_port()
            out = work / "passthrough.cg"
            servers.append(("passthrough", start_server(
                "passthrough", _valgrind(out, peers.passthrough_argv(port, upstream.url)),
                f"http://127.0.0.1:{port}", "/health", work / "passthrough.log",
                env={**os.environ, "PYTHONPATH": str(_ROOT)}, timeout=300), out, peers.FAKE_MODEL, None))
            trees: list[tuple[str, str, Path | None]] = [
                ("stackd" if v == "default" else f"stackd-{v}", v, None) for v in variants]
            if args.baseline:
                trees.append(("stackd-baseline", "default", Path(args.baseline).resolve()))
            for name, variant, tree in trees:
                directory = work / name
                directory.mkdir()
                config = peers.write_stackd_config(directory, upstream.url, variant, idp_url)
                env = {**os.environ, "STACKD_HOME": str(directory / "home")}
                if tree is not None:
                    env["PYTHONPATH"] = os.pathsep.join(
                        [str(tree), *(str(s) for s in sorted((tree / "plugins").glob("*/src")))])
                port = free_port()
                out = directory / "stackd.cg"
                # In the baseline's tree: `python -m` imports the current directory's stackd first.
                server = start_server(name, _valgrind(out, peers.stackd_argv(config, port)), f"http://127.0.0.1:{port}",
                                      "/v1/health", directory / "stackd.log", env=env, timeout=300, cwd=tree)
                servers.append((name, server, out, peers.MODEL_ID, peers.BEARER if variant == "auth-quota" else None))
            modes = [m.strip() for m in args.modes.split(",")]
            phases = [(False, args.requests_nonstream)] if "non-stream" in modes else []
            phases += [(True, args.requests_stream)] if "stream" in modes else []
            for stream, n in phases:
                for name, server, out, model, bearer in servers:
                    if name == "idp":
                        continue
                    print(f"... {name:16} {'stream' if stream else 'non-stream'}", file=sys.stderr, flush=True)
                    results.append(_measure(name, server, out, model, stream, n, args.concurrency, bearer))
        finally:
            for _, server, *_ in servers:
                server.stop()
            upstream.stop()
    for r in results:
        ref = next(x for x in results if x["target"] == "passthrough" and x["mode"] == r["mode"])
        r["vs_passthrough"] = r["instructions_per_request"] / ref["instructions_per_request"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": vars(args) | {
        "out": str(args.out)}, "results": results}, indent=2) + "\n")
    print("| mode | target | requests | instructions/request | vs passthrough |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['target']} | {r['requests']} | {r['instructions_per_request'] / 1e6:.3f} M | "
              f"{r['vs_passthrough']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
