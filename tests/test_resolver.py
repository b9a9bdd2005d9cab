"""Building providers in dependency order, closing in reverse, and refusing impossible graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from stackd import ProviderSpec
from stackd.config.loader import ConfigError, parse_config
from stackd.providers.discovery import Catalog
from stackd.providers.resolver import build_providers

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


def spec(api: str, name: str, requires: tuple[str, ...] = ()) -> ProviderSpec:
    async def factory(config: NoConfig, deps: Mapping[str, Any]) -> Recorder:
        EVENTS.append(f"build {deps['__provider_id__']} with {sorted(k for k in deps if k != '__provider_id__')}")
        return Recorder(str(deps["__provider_id__"]), deps)

    return ProviderSpec(api=api, provider_type=f"inline::{name}", config_class=NoConfig, factory=factory,
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
        ProviderSpec(api="safety", provider_type="inline::bad", config_class=NoConfig, factory=bad_factory,
                     requires=("inference",)),
    ])
    loaded = parse_config(config(safety="bad"), env={}, catalog=catalog)
    async with contextlib.AsyncExitStack() as stack:
        await build_providers(loaded.providers, {"inference": None}, stack)
    assert "close i" in EVENTS
    assert "provider 's' failed to close cleanly" in caplog.text
