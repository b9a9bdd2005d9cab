"""The run config: every problem at once, each as `message @ $.path (file:line:col)`."""

from __future__ import annotations

import textwrap

import pytest

from stackd.config.stores import SqliteStoreConfig
from stackd.loading import ConfigError, LoadedConfig, parse_config


def load(text: str, env: dict[str, str] | None = None, **kw: object) -> LoadedConfig:
    return parse_config(textwrap.dedent(text), filename="run.yaml", env=env or {}, **kw)  # type: ignore[arg-type]


def problems(text: str, env: dict[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, env, **kw)
    return [str(p) for p in info.value.problems]


ECHO = """\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
"""


def test_minimal_config_loads_with_defaults() -> None:
    loaded = load(ECHO + "models:\n- model_id: echo-1\n")
    assert loaded.run.server.port == 8321
    assert loaded.run.server.host == "127.0.0.1"
    assert list(loaded.providers) == ["echo"]
    assert loaded.providers["echo"].config.prefix == ""
    # provider_id defaults to the only inference provider
    assert loaded.models[0].provider_id == "echo"
    assert loaded.warnings == []


def test_version_accepts_int_or_string_and_conda_env_alias() -> None:
    loaded = load("version: '2'\nconda_env: old\napis: []\n")
    assert loaded.run.version == "2"
    assert loaded.run.name == "old"


def test_typo_in_api_name() -> None:
    assert problems("apis: [inferance]\n") == [
        "unknown API 'inferance'; did you mean 'inference'? @ $.apis[0] (run.yaml:1:8)"
    ]


def test_port_not_a_number() -> None:
    assert problems("server:\n  port: abc\n") == [
        "expected an integer, got 'abc' @ $.server.port (run.yaml:2:9)"
    ]


def test_port_out_of_range() -> None:
    assert problems("server:\n  port: 70000\n") == [
        "expected a port number between 1 and 65535 (0 picks a free one), got 70000 @ $.server.port (run.yaml:2:9)"
    ]


def test_missing_provider_type() -> None:
    text = """\
    apis: [inference]
    providers:
      inference:
      - provider_id: echo
    """
    assert problems(text) == ["required field missing @ $.providers.inference[0].provider_type (run.yaml:4:5)"]


def test_missing_environment_variable_names_it_and_the_path() -> None:
    text = ECHO + "models:\n- model_id: ${env.MISSING}\n"
    assert problems(text) == [
        "environment variable MISSING is not set (set it, or write ${env.MISSING:=default}) "
        "@ $.models[0].model_id (run.yaml:8:13)"
    ]


def test_model_naming_no_provider() -> None:
    text = ECHO + "models:\n- model_id: m\n  provider_id: vllm\n"
    assert problems(text) == [
        "no provider with provider_id 'vllm'; inference providers: echo @ $.models[0].provider_id (run.yaml:9:16)"
    ]


def test_two_providers_with_one_id() -> None:
    text = ECHO + "  - provider_id: echo\n    provider_type: inline::echo\n"
    assert problems(text) == [
        "provider_id 'echo' is already used at $.providers.inference[0]; provider ids must be unique "
        "@ $.providers.inference[1].provider_id (run.yaml:7:18)"
    ]


def test_all_problems_are_reported_at_once() -> None:
    text = """\
    apis: [inferance, inference]
    providers:
      inference:
      - provider_id: echo
        provider_type: inline::echo
        config: {prefix: 3}
    models:
    - model_id: e
      model_type: embedding
    """
    assert problems(text) == [
        "unknown API 'inferance'; did you mean 'inference'? @ $.apis[0] (run.yaml:1:8)",
        "expected a string, got 3 @ $.providers.inference[0].config.prefix (run.yaml:6:22)",
        "an embedding model needs metadata.embedding_dimension (the length of its vectors, e.g. 384) "
        "@ $.models[0].metadata (run.yaml:8:3)",
    ]


def test_unknown_keys_are_warnings_with_locations() -> None:
    loaded = load(ECHO + "    config: {prefx: x}\nserver:\n  prot: 1\nvector_dbs: []\n")
    assert [str(w) for w in loaded.warnings] == [
        "'vector_dbs' is a Llama Stack setting that stackd ignores @ $.vector_dbs (run.yaml:10:1)",
        "unknown key 'prot' (did you mean 'port'?); it is ignored @ $.server.prot (run.yaml:9:3)",
        "unknown key 'prefx' for inline::echo; it is ignored @ $.providers.inference[0].config.prefx (run.yaml:7:14)",
    ]


def test_unknown_provider_type_lists_installed_and_names_the_package() -> None:
    text = "apis: [inference]\nproviders:\n  inference:\n  - provider_id: x\n    provider_type: remote::nope\n"
    (message,) = problems(text)
    assert message.startswith("unknown provider_type 'remote::nope': install the plugin that provides it "
                              "(pip install stackd-provider-nope); installed provider types: ")
    assert "inline::echo" in message
    assert message.endswith("@ $.providers.inference[0].provider_type (run.yaml:5:20)")


def test_broken_plugin_is_named_by_distribution_and_only_breaks_configs_using_it() -> None:
    load(ECHO)  # the broken plugin is installed too, and does not matter here
    text = "apis: [inference]\nproviders:\n  inference:\n  - provider_id: x\n    provider_type: inline::broken\n"
    (message,) = problems(text)
    assert "plugin stackd-provider-echo 0.1.0" in message
    assert "failed to import: ImportError: this plugin is broken on purpose" in message


def test_provider_under_the_wrong_api() -> None:
    text = "apis: [safety]\nproviders:\n  safety:\n  - provider_id: x\n    provider_type: inline::echo\n"
    assert problems(text) == [
        "'inline::echo' serves the 'inference' API, not 'safety'; move it under providers.inference "
        "@ $.providers.safety[0].provider_type (run.yaml:5:20)"
    ]


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${env.X}", {"X": "v"}, "v"),
        ("${env.X:=d}", {}, "d"),
        ("${env.X:=d}", {"X": ""}, "d"),
        ("${env.X:=d}", {"X": "v"}, "v"),
        ("${env.X:+alt}", {"X": "v"}, "alt"),
        ("${env.X:+alt}", {}, None),
        ("${env.X:d}", {}, "d"),
        ("${env.X:d}", {"X": "v"}, "v"),
        ("a-${env.X:=1}-b", {}, "a-1-b"),
        ("${env.X:=}", {}, None),
    ],
)
def test_env_substitution_forms(value: str, env: dict[str, str], expected: object) -> None:
    loaded = load(f"image_name: \"{value}\"\n", env)
    assert loaded.run.image_name == expected


def test_whole_value_substitution_is_converted() -> None:
    loaded = load("server:\n  port: ${env.P:=9000}\n  max_body_bytes: ${env.B}\n", {"B": "2048"})
    assert loaded.run.server.port == 9000
    assert loaded.run.server.max_body_bytes == 2048


def test_empty_provider_id_disables_the_provider_with_its_models() -> None:
    text = ECHO + """\
  - provider_id: ${env.ENABLE_SECOND:+second}
    provider_type: inline::echo
models:
- model_id: a
  provider_id: echo
- model_id: b
  provider_id: ${env.ENABLE_SECOND:+second}
"""
    loaded = load(text)
    assert list(loaded.providers) == ["echo"]
    assert [m.model_id for m in loaded.models] == ["a"]
    enabled = load(text, {"ENABLE_SECOND": "1"})
    assert list(enabled.providers) == ["echo", "second"]
    assert [(m.model_id, m.provider_id) for m in enabled.models] == [("a", "echo"), ("b", "second")]


def test_llama_stack_disabled_sentinel() -> None:
    text = ECHO + """\
  - provider_id: ${env.ENABLE_VLLM:=__disabled__}
    provider_type: remote::not-installed
models:
- model_id: ${env.VLLM_MODEL:=__disabled__}
  provider_id: ${env.ENABLE_VLLM:=__disabled__}
"""
    loaded = load(text)
    assert list(loaded.providers) == ["echo"]
    assert loaded.models == []


def test_several_providers_need_provider_id_on_models() -> None:
    text = ECHO + "  - provider_id: two\n    provider_type: inline::echo\nmodels:\n- model_id: m\n"
    assert problems(text) == [
        "provider_id is required: several inference providers are configured (echo, two) "
        "@ $.models[0].provider_id (run.yaml:10:3)"
    ]


LLAMA_STACK_RUN = """\
version: '2'
image_name: seed
apis: [agents, inference, safety, telemetry, vector_io]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
  agents:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
    config: {persistence_store: {type: sqlite, db_path: /tmp/agents.db}}
  safety:
  - provider_id: prompt-guard
    provider_type: inline::prompt-guard
  telemetry:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
  vector_io:
  - provider_id: faiss
    provider_type: inline::faiss
metadata_store: {type: sqlite, db_path: /tmp/registry.db}
models:
- model_id: echo-1
  provider_id: echo
shields: []
vector_dbs: []
datasets: []
scoring_fns: []
benchmarks: []
tool_groups:
- toolgroup_id: builtin::websearch
  provider_id: tavily-search
server:
  port: 8321
"""


def test_llama_stack_run_yaml_names_missing_plugins() -> None:
    found = problems(LLAMA_STACK_RUN)
    assert len(found) == 4  # agents, safety, telemetry, vector_io (telemetry reuses the meta-reference id)
    assert any("provider_type 'inline::meta-reference'" in p and "pip install stackd-provider-meta-reference" in p
               for p in found)
    assert any("pip install stackd-provider-prompt-guard" in p for p in found)
    assert any("pip install stackd-provider-faiss" in p for p in found)


def test_llama_stack_run_yaml_with_skip_missing_apis() -> None:
    loaded = load(LLAMA_STACK_RUN, skip_missing_apis=True)
    assert loaded.served_apis() == ["inference"]
    assert sorted(loaded.missing_apis) == ["agents", "safety", "telemetry", "vector_io"]
    assert "pip install stackd-provider-faiss" in loaded.missing_apis["vector_io"]
    ignored = {w.path for w in loaded.warnings}
    assert {"$.vector_dbs", "$.tool_groups", "$.datasets"} <= ignored
    assert isinstance(loaded.run.metadata_store, SqliteStoreConfig)


def test_tls_needs_both_files(tmp_path: object) -> None:
    assert problems("server:\n  tls_certfile: /nonexistent/cert.pem\n") == [
        "TLS needs both tls_certfile and tls_keyfile @ $.server (run.yaml:2:3)",
        "file not found: /nonexistent/cert.pem @ $.server.tls_certfile (run.yaml:2:17)",
    ]


def test_not_yaml() -> None:
    assert problems("apis: [inference\n") == [
        "not valid YAML: expected ',' or ']', but got '<stream end>' @ $ (run.yaml:2:1)"
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["the config must be a mapping of keys to values @ $ (run.yaml:1:1)"]


def test_store_type_is_checked() -> None:
    assert problems("metadata_store: {type: mysql}\n") == [
        "unknown store type 'mysql'; expected one of 'sqlite', 'postgres', 'redis' @ $.metadata_store.type "
        "(run.yaml:1:24)"
    ]


def test_type_errors_do_not_hide_cross_checks() -> None:
    text = """\
apis: [inferance, inference]
providers:
  inference:
  - provider_id: broken
  - provider_id: echo
    provider_type: inline::echo
models:
- model_id: a
  provider_id: nowhere
- model_id: b
  provider_id: broken
- model_id: 7
server:
  port: 70000
"""
    assert problems(text) == [
        "required field missing @ $.providers.inference[0].provider_type (run.yaml:4:5)",
        "expected a string, got 7 @ $.models[2].model_id (run.yaml:12:13)",
        "expected a port number between 1 and 65535 (0 picks a free one), got 70000 @ $.server.port (run.yaml:14:9)",
        "unknown API 'inferance'; did you mean 'inference'? @ $.apis[0] (run.yaml:1:8)",
        "no provider with provider_id 'nowhere'; inference providers: echo @ $.models[0].provider_id (run.yaml:9:16)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  auth: {provider_type: oauth2_token, config: {}}\n",
         "oauth2_token needs exactly one of jwks (verify JWTs against a key set) or introspection (ask an "
         "RFC 7662 endpoint) @ $.server.auth.config (run.yaml:2:47)"),
        ("server:\n  auth: {provider_type: oauth3, config: {}}\n",
         "unknown auth provider provider_type 'oauth3'; expected one of 'oauth2_token', 'custom' "
         "@ $.server.auth.provider_type (run.yaml:2:25)"),
        ("server:\n  quota: {kvstore: {type: postgres, table_name: 'quota; drop table x'}}\n",
         "invalid table name 'quota; drop table x': use letters, digits and '_' (at most 63, not starting "
         "with a digit) @ $.server.quota.kvstore.table_name (run.yaml:2:49)"),
        ("metadata_store: {type: postgres}\ninference_store: {type: postgres, table_name: stackd_kvstore}\n",
         "$.metadata_store uses the table 'stackd_kvstore' of the same database: give each store its own "
         "table_name @ $.inference_store.table_name (run.yaml:2:47)"),
        ("inference_store: {type: redis}\n",
         "inference_store type 'redis' cannot hold chat completions; use sqlite or postgres (or none to store nothing) "
         "@ $.inference_store.type (run.yaml:1:25)"),
    ],
)
def test_settings_this_build_cannot_honour_are_errors(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_a_missing_driver_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    assert problems("metadata_store: {type: redis}\n") == [
        "$.metadata_store type 'redis' needs the redis driver, which is not installed: pip install "
        "'stackd-server[redis]' @ $.metadata_store.type (run.yaml:1:24)"]


def test_install_hint_follows_the_naming_rule() -> None:
    from stackd.providers.discovery import package_hint

    assert package_hint("remote::bedrock") == "stackd-provider-bedrock"
    assert package_hint("inline::llama_guard") == "stackd-provider-llama-guard"
    assert package_hint("remote::Ollama") == "stackd-provider-ollama"
