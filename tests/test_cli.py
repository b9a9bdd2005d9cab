"""The ``stackd`` command as a user runs it: real processes, real ports, real signals."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stackd
from stackd.loading import load_config

LOCATED = re.compile(r"^error: (?P<msg>.+) @ (?P<path>\$\S*) \((?P<file>[^:()]+):(?P<line>\d+):(?P<col>\d+)\)$")

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


def request(url: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def located_errors(stderr: str) -> list[dict[str, str]]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("error: "):
            m = LOCATED.match(line)
            assert m, f"not in the 'message @ $.path (file:line:col)' form: {line!r}"
            out.append(m.groupdict())
    return out


# ---- validate ----------------------------------------------------------------------------------


def test_validate_good_config(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    done = run_cli("validate", "good.yaml")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    assert "1 provider(s), 1 model(s)" in done.stdout


@pytest.mark.parametrize(
    ("text", "path", "line", "col", "words"),
    [
        pytest.param(GOOD.replace("[inference]", "[inference, infrence]"), "$.apis[1]", 2, 19,
                     ["infrence", "did you mean 'inference'"], id="typo-api"),
        pytest.param(GOOD + "server:\n  port: \"abc\"\n", "$.server.port", 10, 9, ["integer", "'abc'"],
                     id="port-abc"),
        pytest.param(GOOD.replace("    provider_type: inline::echo\n", ""), "$.providers.inference[0].provider_type",
                     5, 5, ["required"], id="missing-provider-type"),
        pytest.param(GOOD.replace("model_id: echo-1", "model_id: ${env.STACKD_TEST_MISSING_VAR}"),
                     "$.models[0].model_id", 8, 13, ["STACKD_TEST_MISSING_VAR", "not set"], id="missing-env"),
        pytest.param(GOOD + "  provider_id: ghost\n", "$.models[0].provider_id", 9, 16, ["'ghost'", "echo"],
                     id="model-with-unknown-provider"),
        pytest.param(GOOD.replace("models:", "  - provider_id: echo\n    provider_type: inline::echo\nmodels:"),
                     "$.providers.inference[1].provider_id", 7, 18, ["'echo'", "unique"], id="duplicate-provider-id"),
        pytest.param(GOOD.replace("inline::echo", "inline::nope"), "$.providers.inference[0].provider_type", 6, 20,
                     ["inline::nope", "pip install stackd-provider-nope", "inline::echo", "remote::vllm"],
                     id="unknown-provider-type"),
    ],
)
def test_validate_bad_config(run_cli: Callable[..., Any], tmp_path: Path, text: str, path: str, line: int, col: int,
                             words: list[str]) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    done = run_cli("validate", "bad.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = located_errors(done.stderr)
    assert len(errors) == 1, done.stderr
    (err,) = errors
    assert err["path"] == path
    assert (err["file"], int(err["line"]), int(err["col"])) == ("bad.yaml", line, col)
    for word in words:
        assert word in err["msg"]
    assert "nothing was started" in done.stderr


def test_validate_reports_every_error_at_once(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    # Errors of one kind come together: all type errors, or all cross-reference errors.
    text = GOOD.replace("    provider_type: inline::echo\n", "") + "  model_type: vision\nserver:\n  port: 70000\n"
    (tmp_path / "bad.yaml").write_text(text)
    done = run_cli("validate", "bad.yaml")
    assert done.returncode == 2
    assert {e["path"] for e in located_errors(done.stderr)} == {
        "$.providers.inference[0].provider_type", "$.models[0].model_type", "$.server.port"}
    text = GOOD.replace("[inference]", "[inference, infrence]") + "  provider_id: ghost\n"
    (tmp_path / "bad.yaml").write_text(text)
    done = run_cli("validate", "bad.yaml")
    assert done.returncode == 2
    assert {e["path"] for e in located_errors(done.stderr)} == {"$.apis[1]", "$.models[0].provider_id"}


def test_serve_refuses_a_bad_config(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(GOOD + "server:\n  port: \"abc\"\n")
    proc = stackd_serve("bad.yaml")
    assert proc.wait() == 2
    assert "Traceback" not in proc.output()
    assert [e["path"] for e in located_errors("".join(proc.stderr))] == ["$.server.port"]


ENABLE_X = GOOD.replace("models:", """\
  - provider_id: ${env.ENABLE_X:+x}
    provider_type: inline::echo
    config: {models: [x-model]}
models:""") + "  provider_id: echo\n- model_id: x-model\n  provider_id: x\n"


def test_env_plus_form_disables_a_provider_and_its_models(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(ENABLE_X)
    done = run_cli("validate", "x.yaml")
    assert done.returncode == 0, done.stderr
    assert "1 provider(s), 1 model(s)" in done.stdout
    done = run_cli("validate", "x.yaml", "--env", "ENABLE_X=1")
    assert done.returncode == 0, done.stderr
    assert "2 provider(s), 2 model(s)" in done.stdout

    off = load_config(path, env={})
    assert set(off.providers) == {"echo"}
    assert [m.model_id for m in off.models] == ["echo-1"]
    on = load_config(path, env={"ENABLE_X": "yes"})
    assert set(on.providers) == {"echo", "x"}
    assert {m.model_id: m.provider_id for m in on.models} == {"echo-1": "echo", "x-model": "x"}


# ---- serve: ports, --env, signals ----------------------------------------------------------------


def _config_with_port(tmp_path: Path, port: int, config: str = "{}") -> str:
    text = GOOD.replace("models:", f"""\
    config: {config}
models:""") + (
        f"metadata_store: {{type: sqlite, db_path: {tmp_path / 'reg.db'}}}\n"
        f"inference_store: {{type: sqlite, db_path: {tmp_path / 'inf.db'}}}\n"
        f"server:\n  port: {port}\n"
    )
    (tmp_path / "run.yaml").write_text(text)
    return "run.yaml"


@pytest.mark.parametrize(
    ("flag", "env", "expect"),
    [("flag", "env", "flag"), (None, "env", "env"), (None, None, "config")],
)
def test_port_precedence(stackd_serve: Callable[..., Any], tmp_path: Path, port: Callable[[], int],
                         flag: str | None, env: str | None, expect: str) -> None:
    ports = {"flag": port(), "env": port(), "config": port()}
    args = [_config_with_port(tmp_path, ports["config"])]
    if flag:
        args += ["--port", str(ports["flag"])]
    proc = stackd_serve(*args, env={"STACKD_PORT": str(ports["env"])} if env else {})
    url = proc.wait_serving()
    assert url.endswith(f":{ports[expect]}")
    assert request(f"http://127.0.0.1:{ports[expect]}/v1/health") == (200, {"status": "OK"})
    for name, p in ports.items():
        if name != expect:
            assert not listening(p), f"also listening on the {name} port"
    assert proc.stop() == 0


def test_port_zero_announces_the_port_it_got(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    proc = stackd_serve(_config_with_port(tmp_path, 0))
    url = proc.wait_serving()
    got = int(url.rsplit(":", 1)[1])
    assert got != 0
    assert request(f"http://127.0.0.1:{got}/v1/health") == (200, {"status": "OK"})
    assert proc.stop() == 0


def test_env_flag_substitutes_before_loading(stackd_serve: Callable[..., Any], tmp_path: Path,
                                             port: Callable[[], int]) -> None:
    p = port()
    config = '{prefix: "${env.ECHO_PREFIX}", api_key: "${env.ECHO_KEY}"}'
    proc = stackd_serve(_config_with_port(tmp_path, p, config),
                        "--env", "ECHO_PREFIX=pre:", "--env", "ECHO_KEY=sk-cli-42")
    proc.wait_serving()
    status, body = request(f"http://127.0.0.1:{p}/v1/providers/echo")
    assert status == 200
    assert body["config"]["prefix"] == "pre:"
    assert body["config"]["api_key"] == "********"
    status, out = request(f"http://127.0.0.1:{p}/v1/chat/completions",
                          {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]})
    assert out["choices"][0]["message"]["content"] == "pre:hi"
    assert proc.stop() == 0
    assert "sk-cli-42" not in proc.output()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_shut_down_cleanly(stackd_serve: Callable[..., Any], tmp_path: Path, port: Callable[[], int],
                                   sig: signal.Signals) -> None:
    p = port()
    proc = stackd_serve(_config_with_port(tmp_path, p))
    proc.wait_serving()
    status, _ = request(f"http://127.0.0.1:{p}/v1/chat/completions",
                        {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert proc.stop(sig) == 0
    out = proc.output()
    assert "closed provider echo" in out
    assert "Traceback" not in out
    assert not listening(p)


def test_port_in_use_is_reported(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = stackd_serve(_config_with_port(tmp_path, taken))
        assert proc.wait() == 1
    out = proc.output()
    assert f"cannot listen on 127.0.0.1:{taken}" in out
    assert "Traceback" not in out


# ---- a Llama Stack 0.2.x run.yaml ------------------------------------------------------------------

LLAMA_STACK_RUN = """\
version: '2'
image_name: ollama
apis:
- agents
- inference
- safety
- telemetry
- tool_runtime
- vector_io
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {}
  vector_io:
  - provider_id: faiss
    provider_type: inline::faiss
    config:
      kvstore:
        type: sqlite
        db_path: ${env.SQLITE_STORE_DIR:=~/.llama/distributions/ollama}/faiss_store.db
  safety:
  - provider_id: prompt-guard
    provider_type: inline::prompt-guard
    config:
      excluded_categories: []
  agents:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
    config:
      persistence_store:
        type: sqlite
        db_path: ${env.SQLITE_STORE_DIR:=~/.llama/distributions/ollama}/agents_store.db
  telemetry:
  - provider_id: meta-reference-telemetry
    provider_type: inline::meta-reference
    config:
      service_name: ${env.OTEL_SERVICE_NAME:}
      sinks: ${env.TELEMETRY_SINKS:console,sqlite}
  tool_runtime:
  - provider_id: brave-search
    provider_type: remote::brave-search
    config:
      api_key: ${env.BRAVE_SEARCH_API_KEY:}
      max_results: 3
metadata_store:
  type: sqlite
  db_path: ${env.SQLITE_STORE_DIR:=~/.llama/distributions/ollama}/registry.db
inference_store:
  type: sqlite
  db_path: ${env.SQLITE_STORE_DIR:=~/.llama/distributions/ollama}/inference_store.db
models:
- metadata: {}
  model_id: echo-1
  provider_id: echo
  model_type: llm
shields:
- shield_id: meta-llama/Llama-Guard-3-1B
  provider_id: prompt-guard
vector_dbs: []
datasets: []
scoring_fns: []
benchmarks: []
tool_groups:
- toolgroup_id: builtin::websearch
  provider_id: brave-search
server:
  port: 8321
"""

MISSING = {
    "vector_io": ("inline::faiss", "stackd-provider-faiss"),
    "safety": ("inline::prompt-guard", "stackd-provider-prompt-guard"),
    "agents": ("inline::meta-reference", "stackd-provider-meta-reference"),
    "telemetry": ("inline::meta-reference", "stackd-provider-meta-reference"),
    "tool_runtime": ("remote::brave-search", "stackd-provider-brave-search"),
}


def test_llama_stack_run_yaml_names_the_missing_plugins(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(LLAMA_STACK_RUN)
    done = run_cli("validate", "run.yaml", env={"SQLITE_STORE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = {e["path"]: e["msg"] for e in located_errors(done.stderr)}
    assert set(errors) == {f"$.providers.{api}[0].provider_type" for api in MISSING}
    for api, (ptype, package) in MISSING.items():
        msg = errors[f"$.providers.{api}[0].provider_type"]
        assert ptype in msg and f"pip install {package}" in msg
    # The Llama Stack keys stackd does not use are warnings that name their place.
    for key in ("vector_dbs", "tool_groups"):
        assert re.search(rf"^warning: .*{key}.* @ \$\.{key} \(run\.yaml:\d+:\d+\)$", done.stderr, re.M), done.stderr


def test_llama_stack_run_yaml_with_skip_missing_apis(stackd_serve: Callable[..., Any], tmp_path: Path,
                                                     port: Callable[[], int]) -> None:
    (tmp_path / "run.yaml").write_text(LLAMA_STACK_RUN)
    p = port()
    proc = stackd_serve("run.yaml", "--skip-missing-apis", "--port", str(p),
                        env={"SQLITE_STORE_DIR": str(tmp_path)})
    proc.wait_serving()
    stderr = "".join(proc.stderr)
    for api, (_, package) in MISSING.items():
        assert re.search(rf"NOT SERVING the {api} API: .*pip install {package}", stderr), stderr
    base = f"http://127.0.0.1:{p}"
    for method, path, package in (
        ("POST", "/v1/agents", "stackd-provider-meta-reference"),
        ("POST", "/v1/openai/v1/responses", "stackd-provider-meta-reference"),
        ("POST", "/v1/vector-io/query", "stackd-provider-faiss"),
        ("POST", "/v1/safety/run-shield", "stackd-provider-prompt-guard"),
        ("POST", "/v1/tool-runtime/invoke", "stackd-provider-brave-search"),
    ):
        status, body = request(base + path, {}, method=method)
        assert status == 501, (path, body)
        assert package in body["error"]["message"], (path, body)
    # What is installed still works; the shield of the missing safety provider is not listed.
    status, out = request(base + "/v1/chat/completions",
                          {"model": "echo-1", "messages": [{"role": "user", "content": "still up"}]})
    assert (status, out["choices"][0]["message"]["content"]) == (200, "still up")
    assert request(base + "/v1/shields") == (200, {"data": []})
    assert proc.stop(signal.SIGINT) == 0
    assert "Traceback" not in proc.output()


# ---- providers, version -----------------------------------------------------------------------------


def test_providers_lists_plugins_and_reports_a_broken_one(run_cli: Callable[..., Any]) -> None:
    done = run_cli("providers")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    blocks = {b.splitlines()[0].split()[0]: b for b in out.strip().split("\n\n")}
    echo = blocks["inline::echo"]
    assert "(stackd-provider-echo 0.1.0)" in echo.splitlines()[0]
    assert "api: inference" in echo
    for field in ("prefix", "models", "embedding_dimension", "api_key"):
        assert re.search(rf"^\s+config\.{field}: ", echo, re.M), echo
    assert re.search(r"config\.embedding_dimension: int = 8", echo)
    broken = blocks["inline::broken"]
    assert "(stackd-provider-echo 0.1.0)" in broken.splitlines()[0]
    assert "BROKEN" in broken
    assert "on purpose" in broken  # the import error is shown, not a traceback
    # Other plugins are still listed after the broken one.
    assert "remote::vllm" in blocks


def test_version(run_cli: Callable[..., Any]) -> None:
    done = run_cli("version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"stackd {stackd.__version__}"


def test_serve_refuses_a_provider_that_breaks_the_contract(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "misspelt.yaml").write_text(GOOD.replace("inline::echo", "inline::misspelt"))
    proc = stackd_serve("misspelt.yaml")
    assert proc.wait() == 1
    out = proc.output()
    assert "Traceback" not in out
    assert ("provider 'echo' (inline::misspelt, from stackd-provider-echo 0.1.0) does not implement the "
            "inference API: openai_chat_completion() is missing; health() must be async def") in out
    assert "closed provider echo" in out  # what its factory opened is released all the same
