"""Every example config loads, as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackd.loading import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["ollama.yaml", "vllm.yaml", "starter.yaml"])
def test_example_loads_without_warnings(name: str) -> None:
    loaded = load_config(EXAMPLES / name, env={})
    assert loaded.warnings == []
    assert loaded.models


def test_starter_is_the_packaged_default() -> None:
    packaged = Path(__file__).resolve().parent.parent / "stackd" / "starter.yaml"
    assert (EXAMPLES / "starter.yaml").read_text() == packaged.read_text()


@pytest.mark.parametrize(
    ("env", "providers", "models"),
    [
        ({}, [], []),
        ({"ENABLE_OLLAMA": "1"}, ["ollama"], ["llama3.2:3b"]),
        ({"ENABLE_VLLM": "1", "ENABLE_LLAMA_CPP": "1"}, ["vllm", "llama-cpp"],
         ["meta-llama/Llama-3.2-3B-Instruct", "gemma3-270m"]),
    ],
)
def test_switchable_example(env: dict[str, str], providers: list[str], models: list[str]) -> None:
    loaded = load_config(EXAMPLES / "switchable.yaml", env=env)
    assert list(loaded.providers) == providers
    assert [m.model_id for m in loaded.models] == models


def test_llama_stack_seed_serves_what_is_installed() -> None:
    loaded = load_config(EXAMPLES / "llama-stack-seed.yaml", env={}, skip_missing_apis=True)
    assert loaded.served_apis() == ["inference", "safety"]
    assert sorted(loaded.missing_apis) == ["agents", "telemetry", "vector_io"]
    # inline::llama-guard is installed with the test plugins: the seed's shield is served.
    assert [s.shield_id for s in loaded.shields] == ["meta-llama/Llama-Guard-3-1B"]
