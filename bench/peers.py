"""The servers under test: their run configs and command lines.

stackd runs as ``python -m stackd.cli serve`` (the CLI picks uvloop itself). Llama Stack
0.2.12, the optional peer, runs its own server module from a separate venv, with only the
inference API and its ``remote::vllm`` provider pointed at the same upstream.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["BEARER", "FAKE_MODEL", "MODEL_ID", "NGINX", "STACKD_VARIANTS", "llama_stack_argv", "nginx_argv",
           "passthrough_argv", "stackd_argv", "upstream_argv", "write_llama_stack_config", "write_nginx_config",
           "write_stackd_config"]

FAKE_MODEL = "fake-model"  # what the upstream serves
MODEL_ID = "bench-llm"  # what clients of stackd / Llama Stack ask for (resolved to FAKE_MODEL)


NGINX = Path("/usr/sbin/nginx")  # Debian's package (apt-get install -y nginx)


def upstream_argv(port: int, chunks: int, token_interval_ms: float = 0.0) -> list[str]:
    argv = [sys.executable, "-m", "stackd.testing.fake_openai", "--host", "127.0.0.1", "--port", str(port),
            "--chunks", str(chunks), "--models", FAKE_MODEL, "--unique-ids"]
    if token_interval_ms:
        argv += ["--token-interval", f"{token_interval_ms:g}ms"]
    return argv


def passthrough_argv(port: int, upstream_url: str) -> list[str]:
    return [sys.executable, "-m", "bench.passthrough", "--port", str(port), "--upstream", upstream_url]


def write_nginx_config(directory: Path, upstream_url: str, port: int) -> Path:
    """One worker, keep-alive to the upstream, nothing buffered: nginx as a streaming LLM proxy."""
    prefix = directory / "nginx"
    prefix.mkdir(exist_ok=True)
    upstream = upstream_url.removeprefix("http://")
    path = prefix / "nginx.conf"
    path.write_text(
        f"""worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream fake {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""
    )
    return path


def nginx_argv(config: Path) -> list[str]:
    return [str(NGINX), "-p", str(config.parent), "-c", str(config)]


# --stackd-config of bench/run.py: what is switched on beside the proxy path.
STACKD_VARIANTS = ("default", "no-store", "no-log", "no-metrics", "bare", "auth-quota")
BEARER = "bench-token"  # what the load generator sends to the auth-quota variant


def write_stackd_config(
    directory: Path, upstream_url: str, variant: str = "default", idp_url: str | None = None
) -> Path:
    """stackd's config for the benchmark: ``default`` has the inference store on (as every
    config does unless it says otherwise), ``no-store`` says ``inference_store: {type: none}``,
    ``no-log`` says ``server.access_log: false``, ``no-metrics`` ``server.metrics.enabled: false``,
    ``bare`` all three off (stackd as a pure proxy),
    ``auth-quota`` adds custom bearer auth (decisions cached, the IdP is ``idp_url``) and a quota."""
    path = directory / "stackd-bench.yaml"
    store = ("{type: none}" if variant in ("no-store", "bare")
             else f"\n  type: sqlite\n  db_path: {directory}/stackd/inference_store.db")
    extra = ""
    if variant in ("no-log", "bare"):
        extra += "  access_log: false\n"
    if variant in ("no-metrics", "bare"):
        extra += "  metrics: {enabled: false}\n"
    if variant == "auth-quota":
        extra = (f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {idp_url}/auth\n"
                 f"      cache_ttl: 3600\n"
                 f"  quota:\n    kvstore: {{type: sqlite, db_path: {directory}/stackd/quota.db}}\n"
                 "    anonymous_max_requests: 1000000000\n    authenticated_max_requests: 1000000000\n"
                 "    period: day\n")
    path.write_text(
        f"""version: 2
image_name: bench
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config:
      url: {upstream_url}/v1
metadata_store:
  type: sqlite
  db_path: {directory}/stackd/registry.db
inference_store: {store}
models:
- model_id: {MODEL_ID}
  provider_id: vllm
  provider_model_id: {FAKE_MODEL}
  model_type: llm
server:
  host: 127.0.0.1
{extra}"""
    )
    return path


def stackd_argv(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "stackd.cli", "--log-level", "WARNING", "serve", str(config), "--port", str(port)]


def write_llama_stack_config(directory: Path, upstream_url: str, port: int) -> Path:
    path = directory / "llama-stack-bench.yaml"
    path.write_text(
        f"""version: '2'
image_name: bench
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config:
      url: {upstream_url}/v1
      max_tokens: 4096
      api_token: fake
      tls_verify: true
metadata_store:
  type: sqlite
  db_path: {directory}/llama-stack/registry.db
inference_store:
  type: sqlite
  db_path: {directory}/llama-stack/inference_store.db
models:
- metadata: {{}}
  model_id: {MODEL_ID}
  provider_id: vllm
  provider_model_id: {FAKE_MODEL}
  model_type: llm
shields: []
vector_dbs: []
datasets: []
scoring_fns: []
benchmarks: []
tool_groups: []
server:
  host: 127.0.0.1
  port: {port}
"""
    )
    (directory / "llama-stack").mkdir(exist_ok=True)
    return path


def llama_stack_argv(venv: Path, config: Path, port: int) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", "llama_stack.distribution.server.server",
            "--config", str(config), "--port", str(port)]
