"""Every setting and every plugin-contract field is documented: a new one without docs fails here."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from stackd import ProviderSpec
from stackd.config.auth import (
    CustomAuth,
    CustomAuthConfig,
    IntrospectionConfig,
    JwksConfig,
    OAuth2TokenAuth,
    OAuth2TokenConfig,
)
from stackd.config.schema import ModelInput, QuotaConfig, RunConfig, ServerConfig, ShieldInput
from stackd.config.stores import PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize(
    "cls",
    [RunConfig, ServerConfig, ModelInput, ShieldInput, SqliteStoreConfig, PostgresStoreConfig, RedisStoreConfig,
     OAuth2TokenAuth, CustomAuth, OAuth2TokenConfig, JwksConfig, CustomAuthConfig, IntrospectionConfig, QuotaConfig],
)
def test_config_fields_are_documented(cls: type) -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in attrs.fields(cls) if f"`{f.name}`" not in text]
    assert missing == [], f"document {cls.__name__} fields in docs/configuration.md: {missing}"


def test_provider_spec_fields_are_documented() -> None:
    text = (DOCS / "plugins.md").read_text()
    missing = [f.name for f in attrs.fields(ProviderSpec) if f"`{f.name}`" not in text]
    assert missing == []


def test_provider_protocol_methods_are_documented() -> None:
    """Every method the core calls on a provider (required or optional, of every API) has its row."""
    from stackd.apis.known import COMMON_METHODS, PROVIDER_APIS
    from stackd.providers.build import _protocol_methods

    text = (DOCS / "plugins.md").read_text()
    names = set(COMMON_METHODS)
    for api in PROVIDER_APIS.values():
        if api.protocol is not None:
            names.update(_protocol_methods(api.protocol))
            names.update(api.optional)
    missing = sorted(n for n in names if f" {n}(" not in text and f"`{n}(" not in text)
    assert missing == [], f"document these provider methods in docs/plugins.md: {missing}"
