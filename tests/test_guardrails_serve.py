"""Guardrails as a real ``stackd serve`` process reports them: the start-up listing of guarded
models, and a config whose guarded model names a missing shield refused by ``stackd validate``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("stackd_provider_llama_guard", reason="the inline::llama-guard plugin is installed by tox")

GUARD = "Llama-Guard-3-1B"


def _config(tmp_path: Path, port: int, shields: str) -> str:
    text = f"""\
apis: [inference, safety]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
  safety:
  - provider_id: llama-guard
    provider_type: inline::llama-guard
metadata_store: {{type: sqlite, db_path: {tmp_path / 'reg.db'}}}
inference_store: {{type: sqlite, db_path: {tmp_path / 'inf.db'}}}
models:
- model_id: echo-1
  input_shields: [{shields}]
  output_shields: [{GUARD}]
shields:
- shield_id: {GUARD}
server:
  port: {port}
"""
    (tmp_path / "run.yaml").write_text(text)
    return "run.yaml"


def test_serve_lists_the_guardrails_of_each_model(stackd_serve: Callable[..., Any], tmp_path: Path,
                                                  port: Callable[[], int]) -> None:
    proc = stackd_serve(_config(tmp_path, port(), GUARD))
    proc.wait_serving()
    assert proc.stop() == 0
    out = proc.output()
    assert (f"guardrails of model 'echo-1': input ['{GUARD}'], output ['{GUARD}'] on POST /v1/chat/completions, "
            "/v1/openai/v1/chat/completions, /v1/inference/chat-completion (stream and not; streamed output "
            "checked every 200 characters and at the end); refused with 400 on /v1/completions") in out, out


def test_validate_refuses_a_model_guarded_by_a_missing_shield(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    _config(tmp_path, 0, "nope")
    done = run_cli("validate", "run.yaml")
    assert done.returncode == 2, done.stderr
    assert "shield 'nope' is not among the shields of this file that will run" in done.stderr
    assert "@ $.models[0].input_shields[0] (run.yaml:" in done.stderr
    assert "Traceback" not in done.stderr
