"""The one converter: strict scalars, value types, paths, and config classes that round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackd.config.schema import ModelInput, QuotaConfig, RunConfig, ServerConfig, ShieldInput
from stackd.config.stores import PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig
from stackd.convert import Check, HttpUrl, Seconds, Secret, Tagged, converter, structure, unknown_keys
from stackd.errors import BadRequest


@attrs.frozen
class Inner:
    url: HttpUrl
    timeout: Seconds = 5.0  # type: ignore[assignment]
    token: Secret | None = None


@attrs.frozen
class Outer:
    name: str
    count: int
    flag: bool
    items: list[Inner] = attrs.field(factory=list)
    extra: dict[str, Any] = attrs.field(factory=dict)


def errors_of(data: Any, cls: Any = Outer) -> list[tuple[str, str]]:
    with pytest.raises(BadRequest) as info:
        structure(data, cls)
    return [(e.loc, e.msg) for e in info.value.errors]


def test_strict_scalars_are_not_coerced() -> None:
    assert errors_of({"name": 12, "count": True, "flag": "yes"}) == [
        ("$.name", "expected a string, got 12"),
        ("$.count", "expected an integer, got true"),
        ("$.flag", "expected true or false, got 'yes'"),
    ]


def test_numeric_strings_are_numbers() -> None:
    assert structure({"name": "n", "count": "7", "flag": "true"}, Outer) == Outer("n", 7, True)


def test_value_types_report_on_their_field() -> None:
    data = {"name": "n", "count": 1, "flag": False,
            "items": [{"url": "ftp://x"}, {"url": "http://ok/", "timeout": 0}, {"url": "http://ok", "token": 5}]}
    assert errors_of(data) == [
        ("$.items[0].url", "expected an http(s) URL, got 'ftp://x'"),
        ("$.items[1].timeout", "expected a positive number of seconds, got 0"),
        ("$.items[2].token", "expected a string, got int"),
    ]


def test_shapes_are_checked_before_fields() -> None:
    assert errors_of("text") == [("$", "expected a mapping, got 'text'")]
    assert errors_of({"name": "n", "count": 1, "flag": True, "items": "abc"}) == [
        ("$.items", "expected a list, got 'abc'")
    ]
    assert errors_of({"name": "n", "count": 1, "flag": True, "extra": [1]}) == [
        ("$.extra", "expected a mapping, got a list")
    ]


def test_missing_fields_are_all_reported() -> None:
    assert errors_of({}) == [
        ("$.name", "required field missing"),
        ("$.count", "required field missing"),
        ("$.flag", "required field missing"),
    ]


def test_secrets_never_show() -> None:
    inner = structure({"url": "http://h", "token": "s3cret-value"}, Inner)
    assert "s3cret" not in repr(inner)
    assert converter.unstructure(inner)["token"] == "********"
    assert inner.token is not None and inner.token.reveal() == "s3cret-value"


def test_url_is_normalised() -> None:
    assert structure({"url": " https://h:8000/v1/ "}, Inner).url == "https://h:8000/v1"


def test_unknown_keys_found_at_every_level() -> None:
    data = {"name": "n", "nme": 1, "items": [{"url": "u", "tls": 1}]}
    assert unknown_keys(data, Outer) == ["$.nme", "$.items[0].tls"]


_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_paths = st.builds(Path, _text.filter(lambda t: not t.startswith("~")))  # ~ expands: no round trip
_stores = st.one_of(
    st.builds(SqliteStoreConfig, db_path=_paths),
    st.builds(PostgresStoreConfig, host=_text, port=st.integers(1, 65535), password=st.none()),
    st.builds(RedisStoreConfig, host=_text, db=st.integers(0, 15)),
)
_models = st.builds(
    ModelInput,
    model_id=_text,
    provider_id=st.one_of(st.none(), _text),
    model_type=st.sampled_from(["llm", "embedding"]),
    metadata=st.dictionaries(_text, st.integers(), max_size=2),
)
_server = st.builds(
    ServerConfig,
    host=_text,
    port=st.integers(0, 65535),
    quota=st.one_of(st.none(), st.builds(QuotaConfig, kvstore=_stores, anonymous_max_requests=st.integers(0, 10**6))),
    max_body_bytes=st.integers(1024, 10**9),
)
_runs = st.builds(
    RunConfig,
    version=st.one_of(st.integers(1, 3), _text),
    image_name=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True)),
    apis=st.lists(st.sampled_from(["inference", "safety"]), max_size=2),
    metadata_store=st.one_of(st.none(), _stores),
    models=st.lists(_models, max_size=3),
    shields=st.lists(st.builds(ShieldInput, shield_id=_text), max_size=2),
    server=_server,
)


@settings(max_examples=60, deadline=None)
@given(_runs)
def test_run_config_round_trips(run: RunConfig) -> None:
    data = converter.unstructure(run)
    assert converter.structure(data, RunConfig) == run
    assert unknown_keys(data, RunConfig) == []


def test_urls_with_credentials_are_refused_without_repeating_them() -> None:
    (error,) = errors_of({"url": "https://admin:hunter2@llm.internal/v1"}, Inner)
    assert error[0] == "$.url"
    assert "credentials" in error[1] and "hunter2" not in error[1]


def test_home_of_an_unknown_user_is_a_clear_error() -> None:
    assert errors_of({"db_path": "~no-such-user-here/x.db"}, SqliteStoreConfig) == [
        ("$.db_path", "cannot expand '~no-such-user-here': no such user's home directory; write the path out in full")
    ]


# ---- one converter, built in one place -----------------------------------------------------

_BAD_INPUTS: list[tuple[Any, Any]] = [
    # config: every kind of hook the run config uses
    (RunConfig, {"server": {"port": 99999}}),
    (RunConfig, {"server": {"port": "http"}}),
    (RunConfig, {"server": {"stream_stall_timeout": -1}}),
    (RunConfig, {"metadata_store": {"type": "mysql"}}),
    (RunConfig, {"metadata_store": {"db_path": "x"}}),
    (RunConfig, {"inference_store": {"type": "postgres", "port": "five"}}),
    (RunConfig, {"models": [{"model_id": "m", "model_type": "vision"}]}),
    (RunConfig, {"server": {"quota": {"kvstore": {"type": "sqlite", "db_path": "q"}, "period": "year"}}}),
    (RunConfig, {"apis": "inference"}),
    (RunConfig, {"version": [2]}),
    # native requests: tagged unions, range checks, literals, bespoke hooks
    ("chat", {"model_id": "m", "messages": [{"role": "bot", "content": "x"}]}),
    ("chat", {"model_id": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
    ("chat", {"model_id": "m", "messages": [{"role": "user", "content": {"type": "image", "image": {}}}]}),
    ("chat", {"model_id": "m", "messages": [{"role": "user", "content": 3}]}),
    ("chat", {"model_id": "m", "messages": [], "sampling_params": {"strategy": {"type": "top_p", "temperature": 0}}}),
    ("chat", {"model_id": "m", "messages": [], "sampling_params": {"strategy": {"type": "top_k", "top_k": 0}}}),
    ("chat", {"model_id": "m", "messages": [], "sampling_params": {"max_tokens": -1}}),
    ("chat", {"model_id": "m", "messages": [], "tool_prompt_format": "xml"}),
    ("chat", {"model_id": "m", "messages": [], "response_format": {"type": "regex"}}),
    ("chat", {"model_id": "m", "messages": [], "tools": [{"tool_name": "t", "parameters": {"a": {}}}]}),
    ("chat", {"model_id": "m", "messages": [{"role": "assistant", "content": "",
                                             "tool_calls": [{"call_id": "c", "tool_name": "t", "arguments": 3}]}]}),
    ("embeddings", {"model_id": "m", "contents": [3], "text_truncation": "middle"}),
]


def _request_type(name: Any) -> Any:
    from stackd.apis.native.types import ChatCompletionRequest, EmbeddingsRequest

    return {"chat": ChatCompletionRequest, "embeddings": EmbeddingsRequest}.get(name, name)


@pytest.mark.parametrize(("tp", "data"), _BAD_INPUTS)
def test_a_fresh_converter_rejects_what_the_global_one_rejects(tp: Any, data: Any) -> None:
    from stackd.convert import field_errors, make_converter

    tp = _request_type(tp)
    outcomes = []
    for conv in (converter, make_converter()):
        try:
            conv.structure(data, tp)
        except Exception as exc:  # noqa: BLE001 - compared below
            outcomes.append(sorted(field_errors(exc)))
        else:
            outcomes.append(None)
    assert outcomes[0] is not None, "the global converter accepted a bad input"
    assert outcomes[0] == outcomes[1]


def test_port_out_of_range_is_refused_by_any_converter() -> None:
    from stackd.convert import field_errors, make_converter

    with pytest.raises(Exception) as info:
        make_converter().structure({"port": 99999}, ServerConfig)
    assert field_errors(info.value) == [
        ("$.port", "expected a port number between 1 and 65535 (0 picks a free one), got 99999")
    ]




# What docs/plugins.md shows a plugin author: checks declared on the types of a plugin's config.
Retries = Annotated[int, Check(lambda n: 0 <= n <= 10, "an integer from 0 to 10")]


@attrs.frozen
class KeyAuth:
    key: Secret
    type: Literal["key"] = "key"


@attrs.frozen
class RoleAuth:
    role_arn: str
    type: Literal["role"] = "role"


Auth = Annotated[KeyAuth | RoleAuth, Tagged("type", "auth method")]


@attrs.frozen
class PluginConfig:
    retries: Retries = 2
    auth: Auth | None = None


def test_a_plugin_declares_its_own_checks_on_its_types() -> None:
    assert structure({"auth": {"type": "role", "role_arn": "arn"}}, PluginConfig).auth == RoleAuth("arn")
    assert errors_of({"retries": 11, "auth": {"type": "sso"}}, PluginConfig) == [
        ("$.retries", "expected an integer from 0 to 10, got 11"),
        ("$.auth.type", "unknown auth method type 'sso'; expected one of 'key', 'role'"),
    ]
