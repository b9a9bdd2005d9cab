"""stackd's proxy benchmark: chat completions direct to a fast upstream, then through stackd.

    python -m bench.run                 # from the repository root
    python -m bench.run --quick         # a smoke run (few requests)
    python -m bench.run --with-llama-stack /tmp/ls-venv
    python -m bench.run --profile       # py-spy samples of stackd (separate run!)

Three (or four) processes, all on 127.0.0.1: the upstream (``stackd.testing.fake_openai``
with 64-chunk streams), stackd (``stackd serve`` on a generated ``remote::vllm`` config), the
load generator (``bench/loadgen.py``) and optionally Llama Stack 0.2.12. For each mode
(non-stream, stream) and concurrency (32, 128) every target gets a warm-up and then a bounded
measured phase; CPU comes from /proc/<pid>/stat read exactly around that phase. See
docs/benchmarks.md for what the numbers mean on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from bench import peers
from bench.procs import Server, free_port, peak_rss_mb, rss_mb, start_server, tree_cpu_seconds
from bench.report import evaluate, format_table

__all__ = ["main"]

_LOADGEN = Path(__file__).with_name("loadgen.py")
_ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Target:
    name: str
    url: str
    model: str
    server: Server | None  # None: the upstream itself (direct)


@attrs.frozen
class Phase:
    stream: bool
    concurrency: int
    requests: int

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "non-stream"

    @property
    def key(self) -> str:
        return f"{'stream' if self.stream else 'nonstream'}-c{self.concurrency}"


def _profile_start(pid: int, out: Path) -> subprocess.Popen[bytes]:
    # --nonblocking: stackd is not paused while sampled, so its timing stays close to a normal run.
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "200",
         "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _profile_stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(
    target: Target, upstream: Server, phase: Phase, args: argparse.Namespace, profile_dir: Path | None
) -> dict[str, Any]:
    argv = [sys.executable, str(_LOADGEN), "--url", target.url, "--model", target.model,
            "--concurrency", str(phase.concurrency), "--requests", str(phase.requests),
            "--max-seconds", str(args.max_seconds), "--warmup", str(args.warmup)]
    if phase.stream:
        argv.append("--stream")
    if target.name == _stackd_name("auth-quota"):
        argv += ["--bearer", peers.BEARER]
    if target.name == "llama-stack":
        # It never sends [DONE], and at ~50 ms of CPU per stream one round is warm-up enough.
        argv[argv.index("--warmup") + 1] = str(phase.concurrency)
        argv.append("--no-done")
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        warm = json.loads(gen.stdout.readline() or "{}")
        if warm.get("phase") != "warm" or not warm.get("ok"):
            raise RuntimeError(f"{target.name} {phase.key}: the warm-up failed: {warm or 'no output'}")
        profiler = None
        if profile_dir is not None and target.name.startswith("stackd"):
            profiler = _profile_start(target.server.pid, profile_dir / f"{target.name}-{phase.key}.txt")
            time.sleep(0.5)  # py-spy attaches before the measured phase begins
        server_pid = target.server.pid if target.server else None
        up0 = tree_cpu_seconds(upstream.pid)
        srv0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        gen.stdin.write("go\n")
        gen.stdin.flush()
        done = json.loads(gen.stdout.readline() or "{}")
        up1 = tree_cpu_seconds(upstream.pid)
        srv1 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        if profiler is not None:
            _profile_stop(profiler)
        gen.wait(timeout=30)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    if done.get("phase") != "done":
        raise RuntimeError(f"{target.name} {phase.key}: the load generator gave no result")
    ok = int(done["ok"])
    seconds = float(done["seconds"])
    result: dict[str, Any] = {
        "target": target.name,
        "mode": phase.mode,
        "concurrency": phase.concurrency,
        **{k: v for k, v in done.items() if k != "phase"},
        "upstream_cpu_ms_per_req": (up1 - up0) * 1000 / ok if ok else None,
        "upstream_cpu_cores": (up1 - up0) / seconds if seconds else None,
    }
    if server_pid:
        result["server_cpu_ms_per_req"] = (srv1 - srv0) * 1000 / ok if ok else None
        result["server_cpu_cores"] = (srv1 - srv0) / seconds if seconds else None
        result["server_rss_mb"] = rss_mb(server_pid)
    return result


def _start_all(args: argparse.Namespace, work: Path) -> tuple[Server, dict[str, Server]]:
    up_port = free_port()
    upstream = start_server(
        "upstream", peers.upstream_argv(up_port, args.chunks, args.token_interval),
        f"http://127.0.0.1:{up_port}", "/health", work / "upstream.log",
    )
    servers: dict[str, Server] = {}
    try:
        if "passthrough" in args.references:
            port = free_port()
            servers["passthrough"] = start_server(
                "passthrough", peers.passthrough_argv(port, upstream.url), f"http://127.0.0.1:{port}", "/health",
                work / "passthrough.log", env={**os.environ, "PYTHONPATH": str(_ROOT)},
            )
        if "nginx" in args.references:
            servers.update(_start_nginx(work, upstream))
        idp_url = None
        if "auth-quota" in args.stackd_config:
            idp_port = free_port()
            (work / "jwks.json").write_text('{"keys": []}')
            idp_url = f"http://127.0.0.1:{idp_port}"
            # The IdP is asked once (decisions are cached): it is not part of the measured tree.
            servers["idp"] = start_server(
                "idp", [sys.executable, "-m", "bench.idp", "--port", str(idp_port), "--jwks", str(work / "jwks.json")],
                idp_url, "/health", work / "idp.log", env={**os.environ, "PYTHONPATH": str(_ROOT)},
            )
        for variant in args.stackd_config:
            name = _stackd_name(variant)
            directory = work / name
            directory.mkdir()
            port = free_port()
            config = peers.write_stackd_config(directory, upstream.url, variant, idp_url)
            env = {**os.environ, "STACKD_HOME": str(directory / "stackd-home")}
            servers[name] = start_server(
                name, peers.stackd_argv(config, port), f"http://127.0.0.1:{port}", "/v1/health",
                directory / "stackd.log", env=env,
            )
        if args.baseline:
            servers["stackd-baseline"] = _start_baseline(Path(args.baseline), work, upstream)
        if args.with_llama_stack:
            servers.update(_start_llama_stack(args, work, upstream))
    except BaseException:
        for server in servers.values():
            server.stop()
        upstream.stop()
        raise
    return upstream, servers


def _start_baseline(tree: Path, work: Path, upstream: Server) -> Server:
    """stackd (default config) imported from another source tree, e.g. ``git worktree add /tmp/base main``:
    before and after a change measured in one run."""
    tree = tree.resolve()
    if not (tree / "stackd" / "__init__.py").exists():
        raise SystemExit(f"--baseline {tree}: not a stackd source tree (no stackd/__init__.py)")
    # The tree's own core and plugins come first on the path; the installed entry points name
    # the same modules, so they load from there.
    paths = [str(tree), *(str(src) for src in sorted((tree / "plugins").glob("*/src")))]
    directory = work / "stackd-baseline"
    directory.mkdir()
    config = peers.write_stackd_config(directory, upstream.url)
    port = free_port()
    env = {**os.environ, "STACKD_HOME": str(directory / "stackd-home"), "PYTHONPATH": os.pathsep.join(paths)}
    # In the tree: `python -m` would import the current directory's stackd before PYTHONPATH's.
    return start_server("stackd-baseline", peers.stackd_argv(config, port), f"http://127.0.0.1:{port}",
                        "/v1/health", directory / "stackd.log", env=env, cwd=tree)


def _stackd_name(variant: str) -> str:
    return "stackd" if variant == "default" else f"stackd-{variant}"


def _start_nginx(work: Path, upstream: Server) -> dict[str, Server]:
    if not peers.NGINX.exists():
        print(f"nginx: skipped: no {peers.NGINX} (apt-get install -y nginx)", file=sys.stderr)
        return {}
    port = free_port()
    config = peers.write_nginx_config(work, upstream.url, port)
    return {"nginx": start_server("nginx", peers.nginx_argv(config), f"http://127.0.0.1:{port}", "/health",
                                  work / "nginx.log")}


def _start_llama_stack(args: argparse.Namespace, work: Path, upstream: Server) -> dict[str, Server]:
    venv = Path(args.with_llama_stack)
    if not (venv / "bin" / "python").exists():
        print(f"llama-stack: skipped: no {venv}/bin/python (python -m venv {venv} && "
              f"{venv}/bin/pip install llama-stack==0.2.12 uvicorn aiosqlite 'sqlalchemy[asyncio]')",
              file=sys.stderr)
        return {}
    port = free_port()
    config = peers.write_llama_stack_config(work, upstream.url, port)
    env = {**os.environ, "SQLITE_STORE_DIR": str(work / "llama-stack"), "LLAMA_STACK_LOGGING": "all=warning"}
    try:
        server = start_server(
            "llama-stack", peers.llama_stack_argv(venv, config, port), f"http://127.0.0.1:{port}", "/v1/health",
            work / "llama-stack.log", env=env, timeout=90,
        )
    except RuntimeError as exc:
        print(f"llama-stack: skipped: it did not start: {exc}", file=sys.stderr)
        return {}
    return {"llama-stack": server}


def _targets(upstream: Server, servers: dict[str, Server]) -> list[Target]:
    targets = [Target("direct", f"{upstream.url}/v1/chat/completions", peers.FAKE_MODEL, None)]
    # The references ask for the upstream's own model name: they rewrite nothing.
    for name in ("passthrough", "nginx"):
        if name in servers:
            targets.append(Target(name, f"{servers[name].url}/v1/chat/completions", peers.FAKE_MODEL, servers[name]))
    for name, server in servers.items():
        if name.startswith("stackd"):
            targets.append(Target(name, f"{server.url}/v1/chat/completions", peers.MODEL_ID, server))
    if "llama-stack" in servers:
        targets.append(Target("llama-stack", f"{servers['llama-stack'].url}/v1/openai/v1/chat/completions",
                              peers.MODEL_ID, servers["llama-stack"]))
    return targets


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _summarise_profiles(profile_dir: Path, top: int = 25) -> str:
    """Self-time and inclusive-time leaders of each py-spy raw (collapsed stacks) file."""
    out: list[str] = []
    for path in sorted(profile_dir.glob("*.txt")):
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count_s = line.rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            total += count
            frames = stack.split(";")
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        if not total:
            continue
        out.append(f"== {path.name}: {total} samples")
        out.append("-- self")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
        out.append("-- inclusive")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64, help="content chunks per answer (stream events)")
    parser.add_argument("--concurrency", default="32,128", help="comma-separated concurrency levels")
    parser.add_argument("--modes", default="non-stream,stream", help="non-stream, stream or both")
    parser.add_argument("--requests-nonstream", type=int, default=15000, help="measured requests per phase")
    parser.add_argument("--requests-stream", type=int, default=3000, help="measured requests per phase")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time bound of each phase")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per phase (>= 2x c)")
    parser.add_argument("--token-interval", type=float, default=0.0, metavar="MS",
                        help="the upstream spaces stream events this many ms apart (3: each on its own read)")
    parser.add_argument("--references", default="passthrough,nginx",
                        help="reference proxies beside stackd: passthrough, nginx, both or none")
    parser.add_argument("--stackd-config", default="default",
                        help="comma-separated stackd variants, each its own target: default (inference store "
                             "on), no-store (inference_store: {type: none}), no-log (server.access_log: false), "
                             "auth-quota (bearer auth through a custom endpoint, cached, and a quota)")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also measure stackd imported from this source tree (default config), as "
                             "stackd-baseline: before/after in the same run")
    parser.add_argument("--repeat", type=int, default=1, help="measure every phase this many times, in turn")
    parser.add_argument("--quick", action="store_true", help="few requests: checks that everything runs")
    parser.add_argument("--with-llama-stack", metavar="VENV", help="a venv with llama-stack==0.2.12 installed")
    parser.add_argument("--profile", action="store_true",
                        help="sample stackd with py-spy during its measured phases (do not quote those numbers)")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests_nonstream, args.requests_stream, args.warmup, args.max_seconds = 600, 150, 100, 5.0
    args.stackd_config = [v.strip() for v in args.stackd_config.split(",") if v.strip()]
    unknown = set(args.stackd_config) - set(peers.STACKD_VARIANTS)
    if unknown or not args.stackd_config:
        parser.error(f"--stackd-config: unknown variant(s) {sorted(unknown)}; use {', '.join(peers.STACKD_VARIANTS)}")
    args.references = {r.strip() for r in args.references.split(",") if r.strip() and r.strip() != "none"}
    levels = [int(c) for c in args.concurrency.split(",") if c]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    phases = [
        Phase(mode == "stream", c, args.requests_stream if mode == "stream" else args.requests_nonstream)
        for mode in modes for c in levels for _ in range(args.repeat)
    ]

    with tempfile.TemporaryDirectory(prefix="stackd-bench-") as tmp:
        work = Path(tmp)
        profile_dir = None
        if args.profile:
            profile_dir = args.out.parent / "profiles"
            profile_dir.mkdir(parents=True, exist_ok=True)
        upstream, servers = _start_all(args, work)
        everyone = {"upstream": upstream, **servers}
        startup = {
            name: {"start_s": s.start_seconds, "rss_mb_after_start": rss_mb(s.pid)} for name, s in everyone.items()
        }
        results: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        try:
            for phase in phases:
                for target in _targets(upstream, servers):
                    print(f"... {target.name:12} {phase.mode:10} c={phase.concurrency}", file=sys.stderr, flush=True)
                    try:
                        results.append(measure(target, upstream, phase, args, profile_dir))
                    except RuntimeError as exc:
                        if target.name != "llama-stack":
                            raise
                        # The optional peer failing is a finding, not the end of the run.
                        print(f"llama-stack: {exc}", file=sys.stderr)
                        failures.append({"target": target.name, "mode": phase.mode,
                                         "concurrency": phase.concurrency, "error": str(exc)})
            for name, s in everyone.items():
                startup[name]["rss_mb_after_load"] = rss_mb(s.pid)
                startup[name]["peak_rss_mb"] = peak_rss_mb(s.pid)
        finally:
            for server in servers.values():
                server.stop()
            upstream.stop()

    verdicts = evaluate(results)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "settings": {"chunks": args.chunks, "token_interval_ms": args.token_interval,
                     "stackd_config": args.stackd_config, "repeat": args.repeat,
                     "requests_nonstream": args.requests_nonstream,
                     "requests_stream": args.requests_stream, "max_seconds": args.max_seconds,
                     "warmup": args.warmup, "profiled": args.profile},
        "startup": startup,
        "results": results,
        "failures": failures,
        "targets": verdicts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    if profile_dir is not None:
        summary = _summarise_profiles(profile_dir)
        (profile_dir / "summary.txt").write_text(summary + "\n")
        print(f"\npy-spy profiles: {profile_dir} (summary.txt)")
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
