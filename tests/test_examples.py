"""Every example config loads, as a user would run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# ---- one config per scenario of the seed, validated by the real command with the env it needs -----------


def _tls_files(tmp_path: Path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = {"TLS_CERTFILE": tmp_path / "server.pem", "TLS_KEYFILE": tmp_path / "server.key",
             "TLS_CLIENT_CA": tmp_path / "clients-ca.pem", "KUBE_CA_FILE": tmp_path / "cluster-ca.crt"}
    cert.cert_chain_pems[0].write_to_path(str(files["TLS_CERTFILE"]))
    cert.private_key_pem.write_to_path(str(files["TLS_KEYFILE"]))
    ca.cert_pem.write_to_path(str(files["TLS_CLIENT_CA"]))
    ca.cert_pem.write_to_path(str(files["KUBE_CA_FILE"]))
    return {k: str(v) for k, v in files.items()}


SCENARIOS = {
    # name: (env it needs beyond defaults, served APIs, providers, shields)
    "ollama.yaml": ({}, "inference", ["ollama"], []),
    "vllm.yaml": ({}, "inference", ["vllm"], []),
    "vllm-llama-guard.yaml": ({}, "inference, safety", ["vllm", "vllm-safety", "llama-guard"], ["llama-guard"]),
    "bedrock-shield.yaml": ({"BEDROCK_GUARDRAIL_ID": "gr-abc123"}, "inference, safety", ["ollama", "bedrock"],
                            ["content-guard"]),
    "kubernetes.yaml": ({"TOKEN": "service-account-token"}, "inference", ["vllm"], []),
    "custom-auth.yaml": ({"AUTH_ENDPOINT": "http://auth.internal:8000/validate"}, "inference", ["ollama"], []),
    "quota.yaml": ({}, "inference", ["ollama"], []),
    "quota-auth.yaml": ({"AUTH_ENDPOINT": "http://auth.internal:8000/validate"}, "inference", ["ollama"], []),
    "tls.yaml": ({}, "inference", ["ollama"], []),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_example_validates(name: str, tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    extra, apis, providers, shields = SCENARIOS[name]
    env = {**_tls_files(tmp_path), "QUOTA_DB": str(tmp_path / "quota.db"), "STACKD_STATE": str(tmp_path), **extra}
    done = run_cli("validate", str(EXAMPLES / name), env=env)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    assert done.stdout.strip().endswith(f"APIs: {apis})")
    loaded = load_config(EXAMPLES / name, env=env)
    assert list(loaded.providers) == providers
    assert [s.shield_id for s in loaded.shields] == shields


def test_each_scenario_example_says_what_it_needs(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    """Without its env vars, an example fails naming the variable: never a default that hides the need."""
    done = run_cli("validate", str(EXAMPLES / "bedrock-shield.yaml"), env={"BEDROCK_GUARDRAIL_ID": ""})
    assert done.returncode == 2
    assert "environment variable BEDROCK_GUARDRAIL_ID is not set" in done.stderr
    done = run_cli("validate", str(EXAMPLES / "tls.yaml"), env={"TLS_CERTFILE": "", "TLS_KEYFILE": ""})
    assert "environment variable TLS_CERTFILE is not set" in done.stderr


def test_kubernetes_example_checks_tokens_against_the_cluster_jwks(tmp_path: Path) -> None:
    env = {**_tls_files(tmp_path), "TOKEN": "service-account-token", "STACKD_STATE": str(tmp_path)}
    auth = load_config(EXAMPLES / "kubernetes.yaml", env=env).run.server.auth
    assert auth is not None
    config = auth.config
    assert config.jwks.uri == "https://kubernetes.default.svc:443/openid/v1/jwks"
    assert config.jwks.token.reveal() == "service-account-token"
    assert config.tls_cafile == Path(env["KUBE_CA_FILE"])
    assert config.issuer == "https://kubernetes.default.svc.cluster.local"
    assert config.audience == "stackd"
    # Without TOKEN the key set is fetched anonymously (${env.TOKEN:} is Llama Stack's empty default).
    bare = load_config(EXAMPLES / "kubernetes.yaml", env={k: v for k, v in env.items() if k != "TOKEN"})
    assert bare.run.server.auth is not None
    assert bare.run.server.auth.config.jwks.token is None


def test_tls_example_serves_https_with_optional_client_certificates(tmp_path: Path) -> None:
    env = _tls_files(tmp_path)
    server = load_config(EXAMPLES / "tls.yaml", env=env).run.server
    assert (server.tls_certfile, server.tls_keyfile, server.tls_cafile) == (
        Path(env["TLS_CERTFILE"]), Path(env["TLS_KEYFILE"]), Path(env["TLS_CLIENT_CA"]))
    env["TLS_CLIENT_CA"] = ""
    assert load_config(EXAMPLES / "tls.yaml", env=env).run.server.tls_cafile is None


def test_replicas_on_redis_example_validates(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    done = run_cli("validate", str(EXAMPLES / "replicas-redis.yaml"), env={"REDIS_HOST": "redis.internal"})
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr


# ---- the plain-aiohttp client example, against a live server -------------------------------------------


def test_client_aiohttp_example_imports_no_stackd() -> None:
    import ast

    tree = ast.parse((EXAMPLES / "client_aiohttp.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "stackd" not in imported
    assert imported <= {"__future__", "asyncio", "json", "sys", "aiohttp"}


def test_client_aiohttp_example_runs_against_a_live_server(
    echo_config: Path, stackd_serve: Callable[..., Any], tmp_path: Path
) -> None:
    import subprocess
    import sys

    url = stackd_serve(str(echo_config), "--port", "0").wait_serving()
    done = subprocess.run([sys.executable, "-I", str(EXAMPLES / "client_aiohttp.py"), url, "echo-1"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The echo provider answers with the prompt: once whole, once streamed word by word.
    assert done.stdout.splitlines() == ["Name three colours.", "Name three colours."]
