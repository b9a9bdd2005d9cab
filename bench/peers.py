"""The servers under test: their run configs and command lines.

stackd runs as ``python -m stackd.cli serve`` (the CLI picks uvloop itself). Llama Stack
0.2.12, the optional peer, runs its own server module from a separate venv, with only the
inference API and its ``remote::vllm`` provider pointed at the same upstream.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["FAKE_MODEL", "MODEL_ID", "llama_stack_argv", "stackd_argv", "upstream_argv", "write_llama_stack_config",
           "write_stackd_config"]

FAKE_MODEL = "fake-model"  # what the upstream serves
MODEL_ID = "bench-llm"  # what clients of stackd / Llama Stack ask for (resolved to FAKE_MODEL)


def upstream_argv(port: int, chunks: int) -> list[str]:
    return [sys.executable, "-m", "stackd.testing.fake_openai", "--host", "127.0.0.1", "--port", str(port),
            "--chunks", str(chunks), "--models", FAKE_MODEL, "--unique-ids"]


def write_stackd_config(directory: Path, upstream_url: str) -> Path:
    path = directory / "stackd-bench.yaml"
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
inference_store:
  type: sqlite
  db_path: {directory}/stackd/inference_store.db
models:
- model_id: {MODEL_ID}
  provider_id: vllm
  provider_model_id: {FAKE_MODEL}
  model_type: llm
server:
  host: 127.0.0.1
"""
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
