"""VLLMConfig as the core structures it: paths on errors, masked secrets, round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stackd_provider_vllm.config import VLLMConfig

from stackd.convert import converter, structure
from stackd.errors import BadRequest

PATH = "$.providers.inference[0].config"


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(BadRequest) as info:
        structure(data, VLLMConfig, PATH)
    return [(e.loc, e.msg) for e in info.value.errors]


def test_defaults() -> None:
    config = structure({"url": "http://gpu:8000/v1/"}, VLLMConfig, PATH)
    assert config == VLLMConfig(url="http://gpu:8000/v1")  # type: ignore[arg-type]
    assert config.base_url == "http://gpu:8000"
    assert config.timeout == 600.0
    assert config.tls_verify is True
    assert config.api_token is None
    assert config.max_tokens is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [(f"{PATH}.url", "required field missing")]),
        ({"url": 12}, [(f"{PATH}.url", "expected an http(s) URL, got 12")]),
        ({"url": "gpu:8000"}, [(f"{PATH}.url", "expected an http(s) URL, got 'gpu:8000'")]),
        (
            {"url": "http://x", "timeout": 0, "max_tokens": "many"},
            [
                (f"{PATH}.max_tokens", "expected an integer or null, got 'many'"),
                (f"{PATH}.timeout", "expected a positive number of seconds, got 0"),
            ],
        ),
        (
            {"url": "http://x", "tls_verify": 1},
            [(f"{PATH}.tls_verify", "expected true or false or a string, got 1")],
        ),
        (
            {"url": "http://x", "max_tokens": 0},
            [(PATH, "max_tokens must be a positive integer or null, got 0")],
        ),
        (
            {"url": "http://x", "tls_verify": "/no/such/ca.pem"},
            [
                (
                    PATH,
                    "tls_verify: no CA bundle at '/no/such/ca.pem'; "
                    "give true, false or the path of a PEM file",
                )
            ],
        ),
        ({"url": "http://me:pw@x"}, [(f"{PATH}.url", "a URL must not carry credentials (user:password@); put "
                                     "them in the provider's token or key setting")]),
        ({"url": "http://x", "api_token": 12345}, [(f"{PATH}.api_token", "expected a string, got int")]),
    ],
)
def test_errors_name_the_field(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert sorted(errors_of(data)) == sorted(expected)


def test_token_is_masked_everywhere() -> None:
    config = structure({"url": "http://x", "api_token": "tok-123456"}, VLLMConfig, PATH)
    assert config.api_token is not None
    assert config.api_token.reveal() == "tok-123456"
    assert "tok-123456" not in repr(config)
    assert converter.unstructure(config)["api_token"] == "********"


def test_ca_bundle_path_accepted(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here: the factory loads it")
    assert structure({"url": "https://x", "tls_verify": str(ca)}, VLLMConfig, PATH).tls_verify == str(ca)


@given(
    url=st.sampled_from(
        ["http://localhost:8000", "https://gpu.internal/v1", "http://10.0.0.1:9000/openai/v1"]
    ),
    max_tokens=st.none() | st.integers(1, 1 << 20),
    timeout=st.floats(0.001, 1e6),
    tls_verify=st.booleans(),
    max_connections=st.integers(0, 1000),
)
def test_round_trip(
    url: str, max_tokens: int | None, timeout: float, tls_verify: bool, max_connections: int
) -> None:
    config = structure(
        {
            "url": url,
            "max_tokens": max_tokens,
            "timeout": timeout,
            "tls_verify": tls_verify,
            "max_connections": max_connections,
        },
        VLLMConfig,
        PATH,
    )
    assert structure(converter.unstructure(config), VLLMConfig, PATH) == config
    assert config.base_url.endswith("/v1") is False
