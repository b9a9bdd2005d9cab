"""Attacks on the config (issue #10, "config and state"): files built to crash, hang or exhaust
the loader, numbers that are not numbers, names that are paths, TLS files that cannot serve.
Every one must be a located error (``message @ $.path (file:line:col)``), exit 2, no traceback."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization

from stackd.config.bounds import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_LINE_CHARS, MAX_NODES
from stackd.convert import converter
from stackd.loading import ConfigError, parse_config

GOOD = """\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
models:
- model_id: echo-1
"""

ERROR = re.compile(r"^error: .+ @ \$\S* \([^()]+\)$")


def problems(text: str, **env: str) -> list[str]:
    try:
        parse_config(text, env=env)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def refused(run_cli: Callable[..., Any], path: Path, *lines: str, command: str = "validate") -> str:
    """Runs ``stackd <command> path``; asserts it is refused cleanly with ``lines`` in stderr."""
    args = [command, str(path)] + (["--port", "0"] if command == "serve" else [])
    started = time.monotonic()
    result = run_cli(*args, timeout=60)
    assert time.monotonic() - started < 20, "the loader took too long"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(ERROR.match(e) for e in errors), result.stderr
    for line in lines:
        assert line in result.stderr
    return str(result.stderr)


# ---- files that are not a config ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "serve"])
def test_a_file_that_is_not_utf8_is_located(tmp_path: Path, run_cli: Callable[..., Any], command: str) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.encode() + b"image_name: caf\xe9\n")
    refused(run_cli, path, f"the config file is not UTF-8 text: byte 0xe9 cannot be decoded; save the file as "
            f"UTF-8 @ $ ({path}:9:16)", command=command)


@pytest.mark.parametrize(
    "body",
    [
        "a: " + "[" * 20000 + "]" * 20000 + "\n",  # flow sequences
        "a:\n" + " {b:\n" * 20000 + " c" + "}\n" * 20000,  # flow mappings, one per line
        "".join(" " * i + "k:\n" for i in range(200)) + " " * 200 + "v\n",  # block mappings
        "".join(" " * (2 * i) + "- \n" for i in range(200)),  # block sequences
    ],
    ids=["flow-seq", "flow-map", "block-map", "block-seq"],
)
@pytest.mark.parametrize("command", ["validate", "serve"])
def test_deep_nesting_is_located(tmp_path: Path, run_cli: Callable[..., Any], body: str, command: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(GOOD + body, encoding="utf-8")
    refused(run_cli, path, f"the config is nested more than {MAX_DEPTH} levels deep @ $ ({path}:", command=command)


def laughs(levels: int = 9) -> str:
    text = "lol0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels + 1):
        text += f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return text


@pytest.mark.parametrize("command", ["validate", "serve"])
def test_billion_laughs_is_refused_quickly(tmp_path: Path, run_cli: Callable[..., Any], command: str) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(GOOD + laughs(), encoding="utf-8")
    refused(run_cli, path, f"the config holds more than {MAX_NODES} keys and values once its aliases are expanded",
            command=command)


def test_alias_expansion_is_counted_inside_mappings_and_merge_keys() -> None:
    # Merge keys (<<) expand like aliases; each level multiplies the size by ten.
    text = "m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(10)) + "}\n"
    for i in range(1, 8):
        text += f"m{i}: &m{i} [" + ", ".join([f"{{<<: *m{i - 1}}}"] * 10) + "]\n"
    assert any(f"more than {MAX_NODES} keys and values" in p for p in problems(text))


def test_an_alias_deeper_than_the_bound_once_expanded_is_located() -> None:
    half = MAX_DEPTH // 2 + 2
    text = "a: &deep " + "[" * half + "]" * half + "\nb: " + "[" * half + "*deep" + "]" * half + "\n"
    found = problems(text)
    assert len(found) == 1 and f"nested more than {MAX_DEPTH} levels deep once alias *deep is expanded" in found[0]
    assert "(<config>:2:" in found[0]


def test_aliases_within_bounds_still_work() -> None:
    text = GOOD.replace("models:\n- model_id: echo-1\n", "models:\n- &m {model_id: echo-1, metadata: {k: v}}\n"
                        "- {<<: *m, model_id: echo-2}\n")
    loaded = parse_config(text.replace("inline::echo\n", "inline::echo\n    config: {models: [echo-1, echo-2]}\n"),
                          env={})
    assert [(m.model_id, m.metadata) for m in loaded.models] == [("echo-1", {"k": "v"}), ("echo-2", {"k": "v"})]


def test_a_file_larger_than_the_bound_is_not_read_to_its_end(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "# " + "x" * MAX_CONFIG_BYTES + "\n", encoding="utf-8")
    refused(run_cli, path, f"the config file is larger than 1 MiB; is this the right file? @ $ ({path})")
    # A device that never ends is refused, not read forever.
    refused(run_cli, Path("/dev/zero"), "the config file is larger than 1 MiB")


def test_a_long_line_is_refused_before_the_yaml_loader_sees_it(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    # ruamel.yaml takes quadratic time over one comment line: 4 MiB of it took five minutes.
    path = tmp_path / "long.yaml"
    path.write_text(GOOD + "#" + "a" * MAX_LINE_CHARS + "\n", encoding="utf-8")
    refused(run_cli, path, f"line 9 of the config is longer than {MAX_LINE_CHARS} characters; break it up "
            f"(YAML folds long strings over lines with > or |) @ $ ({path}:9:1)")


def test_too_many_values_without_aliases_are_located() -> None:
    found = problems(GOOD + "x:\n" + "- 1\n" * MAX_NODES)
    assert len(found) == 1, found
    assert found[0].startswith(f"the config holds more than {MAX_NODES} keys and values; is this the right file? @ $ "
                               "(<config>:499")


def test_a_large_real_config_is_within_the_bounds() -> None:
    n = 1500  # about 18,000 keys and values in 100 KB
    names = ", ".join(f"m{i}" for i in range(n))
    text = GOOD.replace("inline::echo\n", f"inline::echo\n    config: {{models: [{names}]}}\n").replace(
        "models:\n- model_id: echo-1\n", "models:\n" + "".join(
            f"- model_id: m{i}\n  provider_model_id: m{i}\n  metadata: {{a: 1, b: two}}\n" for i in range(n)))
    assert len(parse_config(text, env={}).models) == n


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 2\nimage_name: a\x01b\n", "not valid YAML: unacceptable character #x0001"),
        ("version: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit (4300 digits)"),
    ],
    ids=["control-character", "huge-integer"],
)
def test_yaml_that_ruamel_cannot_build_is_an_error(text: str, message: str) -> None:
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(message), found


# ---- numbers are finite --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "1e999", "'NaN'", "'inf'", "'-Infinity'"])
def test_stream_stall_timeout_must_be_finite(value: str) -> None:
    found = problems(GOOD + f"server:\n  stream_stall_timeout: {value}\n")
    assert len(found) == 1, found
    assert found[0].startswith("expected a finite number, got ")
    assert found[0].endswith("@ $.server.stream_stall_timeout (<config>:10:25)")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_number_from_the_environment_must_be_finite(value: str) -> None:
    found = problems(GOOD + "server:\n  stream_stall_timeout: ${env.T}\n", T=value)
    assert len(found) == 1 and found[0].startswith("expected a finite number, got "), found


def test_plugin_float_settings_must_be_finite() -> None:
    text = GOOD.replace("provider_type: inline::echo\n", "provider_type: remote::vllm\n    config:\n"
                        "      url: http://127.0.0.1:1/v1\n      timeout: .nan\n")
    found = problems(text)
    assert any(p.startswith("expected a finite number, got nan @ $.providers.inference[0].config.timeout")
               for p in found), found


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", " inf ", "-Infinity", 10**400])
def test_every_float_is_finite(value: object) -> None:
    with pytest.raises(Exception, match="expected a finite number"):
        converter.structure(value, float)
    if isinstance(value, float):  # unions take numbers only, never strings; an int member takes 10**400
        for tp in (float | None, float | int, int | float | str):
            with pytest.raises(Exception, match="expected a finite number"):
                converter.structure(value, tp)
    assert converter.structure(2.5, float) == 2.5
    assert converter.structure(2.0, int | str) == 2


async def test_request_floats_must_be_finite(client: TestClient[Any, Any]) -> None:
    # JSON itself cannot carry NaN or Infinity (orjson refuses them); a numeric string can.
    body = {"model_id": "echo-1", "messages": [{"role": "user", "content": "hi"}],
            "sampling_params": {"strategy": {"type": "top_p", "temperature": "inf", "top_p": "nan"}}}
    resp = await client.post("/v1/inference/chat-completion", json=body)
    assert resp.status == 400
    assert (await resp.json())["errors"] == [
        {"loc": "$.sampling_params.strategy.temperature", "msg": "expected a finite number, got 'inf'"},
        {"loc": "$.sampling_params.strategy.top_p", "msg": "expected a finite number, got 'nan'"},
    ]


# ---- names and hosts -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/x", "../x", "a/b", "", ".hidden", "a b", "x" * 129, "~root"])
def test_image_name_is_a_name_not_a_path(name: str) -> None:
    found = problems(GOOD + f"image_name: '{name}'\n")
    assert len(found) == 1 and "@ $.image_name (<config>:9:13)" in found[0], found
    assert found[0].startswith("expected a name of up to 128 letters, digits, '.', '_' or '-', starting with a "
                               "letter or digit")


@pytest.mark.parametrize("name", ["starter", "meta-reference-gpu", "ollama_2.1", "A1"])
def test_image_names_that_are_names_pass(name: str) -> None:
    assert problems(GOOD + f"image_name: {name}\n") == []


@pytest.mark.parametrize("host", ["''", "' '", "' 127.0.0.1'"])
def test_an_empty_host_is_an_error(host: str) -> None:
    found = problems(GOOD + f"server:\n  host: {host}\n")
    assert len(found) == 1 and found[0].startswith("expected a host name or address, got "), found
    assert found[0].endswith("@ $.server.host (<config>:10:9)")


# ---- TLS files are loaded by validate --------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    other = ca.issue_cert("other")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem",
             "other_key": tmp_path / "other-key.pem", "garbage": tmp_path / "garbage.pem",
             "encrypted_key": tmp_path / "enc-key.pem", "dir": tmp_path}
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    files["garbage"].write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    files["encrypted_key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return files


def tls_yaml(cert: Path, key: Path, ca: Path | None = None) -> str:
    text = GOOD + f"server:\n  tls_certfile: {cert}\n  tls_keyfile: {key}\n"
    return text + (f"  tls_cafile: {ca}\n" if ca else "")


def test_good_tls_files_pass(tls_files: dict[str, Path]) -> None:
    assert problems(tls_yaml(tls_files["cert"], tls_files["key"], tls_files["ca"])) == []


@pytest.mark.parametrize(
    ("cert", "key", "ca", "expected"),
    [
        ("key", "key", None, "{key} holds no PEM certificate (-----BEGIN CERTIFICATE-----) @ $.server.tls_certfile"),
        ("garbage", "key", None, "{garbage} is not a valid PEM certificate: "),
        ("dir", "key", None, "cannot read {dir}: Is a directory @ $.server.tls_certfile"),
        ("cert", "cert", None, "{cert} holds no PEM private key (-----BEGIN PRIVATE KEY-----) @ $.server.tls_keyfile"),
        ("cert", "other_key", None, "{other_key} is not the private key of the certificate in {cert} @ "
                                    "$.server.tls_keyfile"),
        ("cert", "encrypted_key", None, "{encrypted_key} is encrypted with a passphrase; stackd cannot ask for one"),
        ("cert", "key", "garbage", "{garbage} holds no valid PEM CA certificate: "),
        ("cert", "key", "dir", "cannot read {dir}: Is a directory @ $.server.tls_cafile"),
    ],
)
def test_tls_files_that_cannot_serve_are_located(
    tls_files: dict[str, Path], cert: str, key: str, ca: str | None, expected: str
) -> None:
    found = problems(tls_yaml(tls_files[cert], tls_files[key], tls_files[ca] if ca else None))
    assert len(found) == 1, found
    assert expected.format(**tls_files) in found[0]


def test_validate_names_the_tls_file_that_serve_could_not_use(
    tmp_path: Path, tls_files: dict[str, Path], run_cli: Callable[..., Any]
) -> None:
    path = tmp_path / "tls.yaml"
    path.write_text(tls_yaml(tls_files["cert"], tls_files["other_key"]), encoding="utf-8")
    for command in ("validate", "serve"):
        refused(run_cli, path, f"error: {tls_files['other_key']} is not the private key of the certificate in "
                f"{tls_files['cert']} @ $.server.tls_keyfile ({path}:11:16)", command=command)
