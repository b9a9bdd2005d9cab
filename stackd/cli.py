"""``stackd serve|validate|providers|version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

import stackd
from stackd.config.schema import MAX_WORKERS, RunConfig
from stackd.config.tls import TLSFileError, server_ssl_context
from stackd.loading import ConfigError, LoadedConfig, Problem, load_config
from stackd.logs import FORMATS, configure
from stackd.providers.discovery import Catalog, PluginLoadError

if TYPE_CHECKING:
    from stackd.kvstore.lock import StoreClaim
    from stackd.server.runner import Limits
    from stackd.server.workers import WorkerLink

__all__ = ["main"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXIT_CONFIG = 2
EXIT_START = 1

log = logging.getLogger("stackd")


def _starter_path() -> Path:
    return Path(str(files("stackd").joinpath("starter.yaml")))


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"stackd: --env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _load(args: argparse.Namespace, before_plugins: Callable[[RunConfig], None] | None = None) -> LoadedConfig:
    extra = _parse_env(args.env or [])
    os.environ.update(extra)  # --env sets a variable first, for the config and for plugins alike
    path = Path(args.config) if args.config else _starter_path()
    try:
        loaded = load_config(path, skip_missing_apis=getattr(args, "skip_missing_apis", False),
                             before_plugins=before_plugins)
    except ConfigError as exc:
        _print_problems("warning", exc.warnings)
        _print_problems("error", exc.problems)
        print(f"stackd: {path}: {len(exc.problems)} error(s); nothing was started", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _print_problems("warning", loaded.warnings)
    return loaded


def _print_problems(kind: str, problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(f"{kind}: {problem}", file=sys.stderr)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a number of processes from 1 to {MAX_WORKERS}, got {text!r}")
    return count


def _port(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    if args.port is not None:
        return int(args.port)
    env_port = os.environ.get("STACKD_PORT")
    if env_port:
        try:
            return int(env_port)
        except ValueError:
            raise SystemExit(f"stackd: STACKD_PORT must be a port number, got {env_port!r}") from None
    return int(loaded.run.server.port)


def _ssl_context(loaded: LoadedConfig) -> ssl.SSLContext | None:
    # The loader of the config checks, which passed: a failure here means a file changed since.
    try:
        return server_ssl_context(loaded.run.server)
    except TLSFileError as exc:
        raise OSError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    shared_metrics: list[str] = []

    def before_plugins(run: RunConfig) -> None:
        workers = args.workers if args.workers is not None else run.server.workers
        if workers > 1 and not os.environ.get(MULTIPROC_ENV):
            shared_metrics.append(_share_metrics())

    try:
        return _serve_loaded(args, _load(args, before_plugins))
    finally:
        for directory in shared_metrics:
            shutil.rmtree(directory, ignore_errors=True)


def _share_metrics() -> str:
    """Metrics of every worker, summed on each scrape (prometheus-client's multiprocess mode).

    prometheus-client chooses per-process or shared values once, when it is imported, so
    this comes first: before any plugin (plugins import stackd's upstream client, which
    imports stackd.metrics) and before the server, in the process that forks the workers.
    """
    if "stackd.metrics" in sys.modules:
        raise RuntimeError("stackd.metrics was imported before the metrics of several workers could be shared")
    directory = tempfile.mkdtemp(prefix="stackd-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported early by something else (a sitecustomize): choose again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return directory


def _serve_loaded(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from stackd.server.runner import Limits, bind, fd_limit
    from stackd.server.workers import socket_mode, workers_unsupported

    if loaded.missing_apis:
        for api, why in sorted(loaded.missing_apis.items()):
            print(f"stackd: NOT SERVING the {api} API: {why}; its routes answer 501", file=sys.stderr)
    host = args.host if args.host is not None else loaded.run.server.host
    port = _port(args, loaded)
    workers = args.workers if args.workers is not None else loaded.run.server.workers
    mode = "shared"
    if workers > 1:
        problem = workers_unsupported()
        try:
            mode = socket_mode()
        except ValueError as exc:
            problem = problem or str(exc)
        if problem:
            print(f"stackd: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        ssl_ctx = _ssl_context(loaded)
    except (OSError, ssl.SSLError) as exc:
        print(f"stackd: cannot use the TLS files of server.tls_*: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Bind before the app starts: the app's start opens the stores and reconciles the
    # registry, which a second server on a busy port must not do to the running one's.
    # Bound without SO_REUSEPORT even for workers that bind their own: an unrelated server
    # already on the port (with SO_REUSEPORT or not) is refused here, not joined.
    try:
        socks = bind(host, port)
    except OSError as exc:
        print(f"stackd: cannot listen on {_host_port(host, port)}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_START
    port = int(socks[0].getsockname()[1])
    limits = Limits.from_config(loaded.run.server)
    if limits.max_connections > fd_limit():
        log.warning("server.max_connections (%d) is over the open-file limit (%d): connections past the limit "
                    "get empty replies; raise the limit (ulimit -n) or lower server.max_connections",
                    limits.max_connections, fd_limit())
    url, where = _announced(host, port, "https" if ssl_ctx else "http")
    served = f"{loaded.run.name} with {workers} workers" if workers > 1 else loaded.run.name

    def announce() -> None:
        print(f"stackd {stackd.__version__} serving {served} on {where}{url}", flush=True)
        model = next((m.model_id for m in loaded.models if m.model_type == "llm"), None)
        if model:
            print(
                f"try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
                f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
                flush=True,
            )

    server = _Server(loaded, host, limits, ssl_ctx, access_log=args.access_log)
    try:
        if workers == 1:
            return server.run(socks, announce)
        return _supervise(server, socks, port, mode, workers, announce)
    finally:
        for sock in socks:
            sock.close()


def _supervise(server: _Server, socks: list[socket.socket], port: int, mode: str, workers: int,
               announce: Callable[[], None]) -> int:
    from stackd.errors import StackdError
    from stackd.kvstore.lock import StoreClaim
    from stackd.server.runner import bind
    from stackd.server.workers import Supervisor
    from stackd.stack import lock_metadata_store

    # The supervisor holds the store's lock for its workers (they inherit it): an unrelated
    # server on the same store is refused once, here, before any worker starts.
    try:
        lock = lock_metadata_store(server.loaded)
    except StackdError as exc:
        print(f"stackd: could not start: {exc.message}", file=sys.stderr)
        return EXIT_START
    if mode == "reuseport":
        for sock in socks:
            sock.close()  # each worker binds its own; this one only proved the port free

    def run(link: WorkerLink, first: bool) -> int:
        own = socks
        if mode == "reuseport":
            try:
                own = bind(server.host, port, reuse_port=True)
            except OSError as exc:
                link.failed(f"cannot listen on {_host_port(server.host, port)}: {exc.strerror or exc}")
                return EXIT_START
        return server.run(own, link.ready, link=link, claim=StoreClaim.worker(first=first))

    try:
        return Supervisor(workers, run, announce, float(server.loaded.run.server.shutdown_grace)).serve()
    finally:
        if lock is not None:
            lock.release_now()


@attrs.frozen
class _Server:
    """One serving process: the app on its sockets until a signal (or its supervisor's end)."""

    loaded: LoadedConfig
    host: str
    limits: Limits
    ssl_ctx: ssl.SSLContext | None
    access_log: bool | None
    """``--[no-]access-log``; None: ``server.access_log`` decides."""

    def run(self, socks: list[socket.socket], announce: Callable[[], None], *,
            link: WorkerLink | None = None, claim: StoreClaim | None = None) -> int:
        from stackd.kvstore.lock import StoreClaim
        from stackd.server import create_app
        from stackd.server.runner import serve
        from stackd.server.workers import watch_supervisor

        async def main() -> None:
            stop = asyncio.Event()
            if link is not None:
                watch_supervisor(link, stop)
            await serve(
                create_app(self.loaded, listen_host=self.host, access_log=self.access_log,
                           claim=claim or StoreClaim()), socks,
                limits=self.limits, ssl_context=self.ssl_ctx, announce=announce, stop=stop,
                access_log=None,  # aiohttp's access log is replaced by stackd's (stackd.server.access)
            )

        try:
            try:
                import uvloop
            except ImportError:
                asyncio.run(main())
            else:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(main())
        except Exception as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.debug("start-up failed", exc_info=True)
            if link is not None:
                link.failed(message)  # the supervisor says it, once for all workers
            else:
                print(f"stackd: could not start: {message}", file=sys.stderr)
            return EXIT_START
        return 0


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"


def _announced(host: str, port: int, scheme: str) -> tuple[str, str]:
    """The URL to try, and what the bind means when it is not simply that URL's host.

    A wildcard bind is reachable from other machines: it is announced as such, with the
    loopback URL to try from this one (never as "localhost", which would hide that).
    """
    wildcard = {"": "all interfaces", "0.0.0.0": "all IPv4 interfaces", "::": "all IPv6 interfaces"}
    if host in wildcard:
        loopback = "[::1]" if host == "::" else "127.0.0.1"
        return (f"{scheme}://{loopback}:{port}",
                f"{wildcard[host]} ({_host_port(host, port)}, reachable from other machines), from this machine on ")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}", ""


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    apis = ", ".join(loaded.served_apis()) or "none"
    print(f"{args.config}: OK ({len(loaded.providers)} provider(s), {len(loaded.models)} model(s), "
          f"{len(loaded.shields)} shield(s); APIs: {apis})")
    return 0


def _providers(args: argparse.Namespace) -> int:
    catalog = Catalog.from_entry_points()
    if not catalog.plugins:
        print("no provider plugins are installed (pip install stackd-provider-<name>)")
        return 0
    for name in sorted(catalog.plugins):
        plugin = catalog.plugins[name]
        head = f"{name}  ({plugin.distribution} {plugin.version})"
        try:
            spec = plugin.load()
        except PluginLoadError as exc:
            print(f"{head}\n  BROKEN: {exc}\n")
            continue
        print(f"{head}\n  api: {spec.api}" + (f"  requires: {', '.join(spec.requires)}" if spec.requires else ""))
        if spec.description:
            print(f"  {spec.description}")
        for field in attrs.fields(spec.config_class):
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                shown = "(computed)"
            elif default is attrs.NOTHING:
                shown = "(required)"
            else:
                shown = f"= {default!r}"
            type_name = getattr(field.type, "__name__", None) or str(field.type)
            print(f"  config.{field.name}: {type_name} {shown}")
        print()
    return 0


def _version(_: argparse.Namespace) -> int:
    print(f"stackd {stackd.__version__}")
    return 0


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(f"log level must be one of {', '.join(_LEVELS)} (got {text[:32]!r})")
    return level


def _log_options(parser: argparse.ArgumentParser, level: str, fmt: str) -> None:
    parser.add_argument("--log-level", type=_level, default=level,
                        help="DEBUG, INFO, WARNING or ERROR (default: $STACKD_LOG_LEVEL, else INFO)")
    parser.add_argument("--log-format", choices=FORMATS, default=fmt,
                        help="json (one object a line), text, or auto: text on a terminal, else json "
                             "(default: $STACKD_LOG_FORMAT, else auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stackd", description="A fast Llama-Stack-style API server.")
    _log_options(parser, os.environ.get("STACKD_LOG_LEVEL", "INFO"), os.environ.get("STACKD_LOG_FORMAT", "auto"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a run config (the starter when none is given)")
    serve.add_argument("config", nargs="?", help="run config YAML (default: the embedded llama.cpp starter)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int, help="overrides STACKD_PORT and server.port")
    serve.add_argument("--workers", type=_worker_count, metavar="N",
                       help=f"processes serving the port, 1 to {MAX_WORKERS} (overrides server.workers)")
    serve.add_argument("--env", action="append", metavar="KEY=VALUE", help="set an environment variable first")
    serve.add_argument("--skip-missing-apis", action="store_true",
                       help="start without the APIs whose plugins are not installed (their routes answer 501)")
    serve.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=None,
                       help="one log line per request (default: server.access_log, which is on)")
    # Also after the command (`stackd serve --log-format json`); unset there, the global value stands.
    _log_options(serve, argparse.SUPPRESS, argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    validate = sub.add_parser("validate", help="check a run config without starting anything")
    validate.add_argument("config")
    validate.add_argument("--env", action="append", metavar="KEY=VALUE")
    validate.add_argument("--skip-missing-apis", action="store_true")
    validate.set_defaults(func=_validate)

    providers = sub.add_parser("providers", help="list the installed provider plugins")
    providers.set_defaults(func=_providers)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in FORMATS:  # from STACKD_LOG_FORMAT, which argparse does not check
        parser.error(f"STACKD_LOG_FORMAT must be one of {', '.join(FORMATS)} (got {args.log_format[:32]!r})")
    try:
        level = _level(args.log_level)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"STACKD_LOG_LEVEL: {exc}")
    configure(level, args.log_format)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
