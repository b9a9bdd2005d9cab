"""Building providers in dependency order, closing in reverse, and refusing impossible graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from stackd import ProviderSpec
from stackd.loading import ConfigError, parse_config
from stackd.providers.build import ProviderContractError, build_providers
from stackd.providers.discovery import Catalog

EVENTS: list[str] = []


@attrs.frozen
class NoConfig:
    pass


class Recorder:
    def __init__(self, name: str, deps: Mapping[str, Any]) -> None:
        self.name = name
        self.deps = dict(deps)

    async def close(self) -> None:
        EVENTS.append(f"close {self.name}")

    # The methods of the inference and safety protocols, so the build's contract check passes.
    async def register_model(self, model: Any) -> Any:
        return model

    async def openai_chat_completion(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {}

    async def openai_completion(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {}

    async def openai_embeddings(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {}

    async def run_shield(self, shield: Any, messages: Any, params: Any, ctx: Any) -> dict[str, Any]:
        return {"violation": None}


def spec(api: str, name: str, requires: tuple[str, ...] = ()) -> ProviderSpec:
    async def factory(config: NoConfig, deps: Mapping[str, Any]) -> Recorder:
        EVENTS.append(f"build {deps['__provider_id__']} with {sorted(k for k in deps if not k.startswith('__'))}")
        return Recorder(str(deps["__provider_id__"]), deps)

    return ProviderSpec(contract=1, api=api, provider_type=f"inline::{name}", config_class=NoConfig, factory=factory,
                        requires=requires)


CATALOG = Catalog.from_specs([
    spec("inference", "base"),
    spec("safety", "guard", ("inference",)),
    spec("inference", "loop-a", ("safety",)),
    spec("safety", "loop-b", ("inference",)),
])


def config(safety: str = "guard", inference: str = "base") -> str:
    return f"""\
apis: [inference, safety]
providers:
  safety:
  - provider_id: s
    provider_type: inline::{safety}
  inference:
  - provider_id: i
    provider_type: inline::{inference}
"""


async def test_dependencies_are_built_first_and_closed_last() -> None:
    EVENTS.clear()
    loaded = parse_config(config(), env={}, catalog=CATALOG)
    routers = {"inference": object(), "safety": object()}
    async with contextlib.AsyncExitStack() as stack:
        built = await build_providers(loaded.providers, routers, stack)
        assert built["s"].deps["inference"] is routers["inference"]
        assert "safety" not in built["s"].deps
    assert EVENTS == ["build i with []", "build s with ['inference']", "close s", "close i"]


def test_missing_dependency_is_a_config_error() -> None:
    text = "apis: [safety]\nproviders:\n  safety:\n  - provider_id: s\n    provider_type: inline::guard\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={}, catalog=CATALOG)
    assert [str(p) for p in info.value.problems] == [
        "provider 's' (inline::guard) requires the 'inference' API; add a provider under providers.inference "
        "and list 'inference' in apis @ $.providers (<config>:3:3)"
    ]


def test_cycle_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(safety="loop-b", inference="loop-a"), env={}, catalog=CATALOG)
    (problem,) = info.value.problems
    assert "providers depend on each other in a cycle: inference -> safety -> inference" in str(problem)


async def test_a_failing_close_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    EVENTS.clear()

    class Bad(Recorder):
        async def close(self) -> None:
            raise RuntimeError("disk on fire")

    async def bad_factory(config: NoConfig, deps: Mapping[str, Any]) -> Recorder:
        return Bad("bad", deps)

    catalog = Catalog.from_specs([
        spec("inference", "base"),
        ProviderSpec(contract=1, api="safety", provider_type="inline::bad", config_class=NoConfig, factory=bad_factory,
                     requires=("inference",)),
    ])
    loaded = parse_config(config(safety="bad"), env={}, catalog=catalog)
    async with contextlib.AsyncExitStack() as stack:
        await build_providers(loaded.providers, {"inference": None}, stack)
    assert "close i" in EVENTS
    assert "provider 's' failed to close cleanly" in caplog.text


class Sloppy(Recorder):
    """Every way a provider object can break the contract of the safety API."""

    run_shield = None  # type: ignore[assignment]

    def register_shield(self, shield: Any) -> Any:  # sync: the core awaits it
        return shield

    async def is_ready(self) -> bool:  # async: the core calls it without awaiting
        return True

    close = "not callable"  # type: ignore[assignment]


async def test_a_provider_is_checked_against_its_api_when_built() -> None:
    EVENTS.clear()

    async def sloppy_factory(config: NoConfig, deps: Mapping[str, Any]) -> Recorder:
        return Sloppy("sloppy", deps)

    catalog = Catalog.from_specs([
        spec("inference", "base"),
        ProviderSpec(contract=1, api="safety", provider_type="inline::sloppy", config_class=NoConfig,
                     factory=sloppy_factory, requires=("inference",)),
    ], distribution="stackd-provider-sloppy 9.9")
    loaded = parse_config(config(safety="sloppy"), env={}, catalog=catalog)
    with pytest.raises(ProviderContractError) as info:
        async with contextlib.AsyncExitStack() as stack:
            await build_providers(loaded.providers, {"inference": None}, stack)
    assert str(info.value).startswith(
        "provider 's' (inline::sloppy, from stackd-provider-sloppy 9.9) does not implement the safety API: "
        "run_shield() is missing; close must be a method; is_ready() must be a plain def (not async); "
        "register_shield() must be async def."
    )
    assert "close i" in EVENTS  # the providers built before it are closed


def test_a_plugin_for_an_api_stackd_does_not_know_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import stackd.testing
    from stackd.providers.discovery import InstalledPlugin, PluginLoadError

    telepathy = ProviderSpec(contract=1, api="telepathy", provider_type="inline::mind", config_class=NoConfig,
                             factory=spec("inference", "x").factory)
    monkeypatch.setattr(stackd.testing, "TELEPATHY", telepathy, raising=False)
    plugin = InstalledPlugin("inline::mind", EntryPoint("inline::mind", "stackd.testing:TELEPATHY", "stackd.providers"),
                             "stackd-provider-mind", "1.0")
    with pytest.raises(PluginLoadError) as info:
        plugin.load()
    assert str(info.value).startswith(
        "plugin stackd-provider-mind 1.0 (entry point 'stackd.testing:TELEPATHY') serves the 'telepathy' API, "
        "which this stackd does not know"
    )
