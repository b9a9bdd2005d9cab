"""Every setting and every plugin-contract field is documented: a new one without docs fails here."""

from __future__ import annotations

import typing
from pathlib import Path

import attrs
import pytest

from stackd import ProviderSpec
from stackd.config.schema import RunConfig
from stackd.reference import CORE_SECTIONS, UndocumentedField, configuration_md, field_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def repository_plugins() -> list[str]:
    """The provider types of plugins/*: what docs/configuration.md documents besides the core."""
    import tomllib

    types = []
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        types += list(project["entry-points"]["stackd.providers"])
    return types


def test_configuration_md_is_generated_from_the_schemas() -> None:
    assert repository_plugins() == ["remote::bedrock", "inline::llama-cpp", "inline::llama-guard", "remote::ollama",
                                    "remote::vllm"]
    expected = configuration_md(repository_plugins())
    current = (DOCS / "configuration.md").read_text()
    assert current == expected, "docs/configuration.md is stale: run `tox -e docs` (python -m stackd.reference)"


def _attrs_classes_under(cls: type) -> set[type]:
    found: set[type] = set()
    stack: list[object] = [cls]
    while stack:
        tp = stack.pop()
        if isinstance(tp, type) and attrs.has(tp) and tp not in found:
            found.add(tp)
            stack += list(typing.get_type_hints(tp, include_extras=True).values())
        stack += list(typing.get_args(tp))
    return found


def test_every_class_of_the_run_config_has_a_section() -> None:
    """A new nested settings class cannot hide from the page: every attrs class the run config
    holds is one of its sections."""
    documented = {cls for _, _, cls in CORE_SECTIONS}
    reachable = {c for c in _attrs_classes_under(RunConfig) if c.__module__.startswith("stackd.config")}
    assert reachable - documented == set()


def test_an_undocumented_field_is_an_error_naming_it() -> None:
    @attrs.frozen
    class Sample:
        """Prose.

        - ``documented``: yes
        """

        documented: int = 1
        forgotten: str = ""

    with pytest.raises(UndocumentedField) as info:
        field_docs(Sample)
    assert str(info.value) == (
        "tests.test_docs.test_an_undocumented_field_is_an_error_naming_it.<locals>.Sample: describe forgotten in "
        "its docstring (a line '- ``name``: what it is'); docs/configuration.md is generated from it"
    )


def test_field_docs_read_bullets_shared_names_and_continuations() -> None:
    @attrs.frozen
    class Sample:
        """Some prose.

        - ``a``, ``b``: shared
          and continued
        - ``c``: alone
        """

        a: int = 1
        b: int = 2
        c: int = 3

    assert field_docs(Sample) == ("Some prose.", {"a": "shared and continued", "b": "shared and continued",
                                                  "c": "alone"})


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
