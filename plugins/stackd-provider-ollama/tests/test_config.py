from __future__ import annotations

import pytest
from stackd_provider_ollama.config import DEFAULT_URL, OllamaConfig

from stackd.convert import structure
from stackd.errors import BadRequest

from .conftest import load_spec, make_provider

PATH = "$.providers.inference[0].config"


def test_entry_point_declares_inference_provider() -> None:
    spec = load_spec()
    assert spec.api == "inference"
    assert spec.provider_type == "remote::ollama"
    assert spec.config_class is OllamaConfig


def test_url_defaults_to_env_then_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_URL", raising=False)
    assert structure({}, OllamaConfig, PATH).url == DEFAULT_URL
    monkeypatch.setenv("OLLAMA_URL", "http://gpu-box:11434/")
    cfg = structure({}, OllamaConfig, PATH)
    assert cfg.url == "http://gpu-box:11434"
    assert cfg.keep_alive is None
    assert cfg.timeout == 300.0
    assert cfg.raw_completions is True


def test_explicit_values_and_keep_alive_forms() -> None:
    cfg = structure({"url": "https://o.example/", "keep_alive": "10m", "timeout": "2.5"}, OllamaConfig, PATH)
    assert (cfg.url, cfg.keep_alive, cfg.timeout) == ("https://o.example", "10m", 2.5)
    assert structure({"keep_alive": -1}, OllamaConfig, PATH).keep_alive == -1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "localhost:11434"}, f"expected an http(s) URL, got 'localhost:11434' @ {PATH}.url"),
        ({"url": 12}, f"expected an http(s) URL, got 12 @ {PATH}.url"),
        ({"timeout": 0}, f"expected a positive number of seconds, got 0 @ {PATH}.timeout"),
    ],
)
def test_bad_values_name_the_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        structure(config, OllamaConfig, PATH, what="config")
    assert message in info.value.message


async def test_factory_uses_provider_id(closed_port: int) -> None:
    prov = await make_provider({"url": f"http://127.0.0.1:{closed_port}"}, provider_id="my-ollama")
    try:
        assert prov.provider_id == "my-ollama"
        assert "my-ollama" in repr(prov)
    finally:
        await prov.close()
