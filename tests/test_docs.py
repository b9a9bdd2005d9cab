"""Every setting and every plugin-contract field is documented: a new one without docs fails here."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from stackd import ProviderSpec
from stackd.config.schema import ModelInput, RunConfig, ServerConfig, ShieldInput
from stackd.config.stores import PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize(
    "cls",
    [RunConfig, ServerConfig, ModelInput, ShieldInput, SqliteStoreConfig, PostgresStoreConfig, RedisStoreConfig],
)
def test_config_fields_are_documented(cls: type) -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in attrs.fields(cls) if f"`{f.name}`" not in text]
    assert missing == [], f"document {cls.__name__} fields in docs/configuration.md: {missing}"


def test_provider_spec_fields_are_documented() -> None:
    text = (DOCS / "plugins.md").read_text()
    missing = [f.name for f in attrs.fields(ProviderSpec) if f"`{f.name}`" not in text]
    assert missing == []
