"""A run config, loaded whole: the file (:mod:`stackd.config`), then its plugins (:mod:`stackd.providers`).

Both passes write to one report, so ``stackd validate`` shows every problem of a file, its
plugin configs' included, in one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from stackd.config.loader import ParsedConfig, parse_text, read_config
from stackd.config.problems import ConfigError, Problem
from stackd.config.schema import ModelInput, RunConfig, ShieldInput
from stackd.providers.discovery import Catalog
from stackd.providers.resolve import ResolvedProvider, resolve_providers

__all__ = ["ConfigError", "LoadedConfig", "Problem", "load_config", "parse_config"]


@attrs.frozen
class LoadedConfig:
    run: RunConfig
    providers: dict[str, ResolvedProvider]
    warnings: list[Problem]
    missing_apis: dict[str, str]
    """API -> why it is not served (only with skip_missing_apis)."""
    source: Path | None = None
    models: list[ModelInput] = attrs.field(factory=list)
    shields: list[ShieldInput] = attrs.field(factory=list)

    def served_apis(self) -> list[str]:
        return sorted({p.api for p in self.providers.values()})


def load_config(
    path: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    catalog: Catalog | None = None,
    skip_missing_apis: bool = False,
) -> LoadedConfig:
    """The config of the file at ``path``, or :class:`ConfigError` with every problem in it."""
    return _finish(read_config(path, env=env), catalog, skip_missing_apis)


def parse_config(
    text: str,
    *,
    filename: str = "<config>",
    env: Mapping[str, str] | None = None,
    catalog: Catalog | None = None,
    skip_missing_apis: bool = False,
    source: Path | None = None,
) -> LoadedConfig:
    """:func:`load_config` for a config held in a string."""
    return _finish(parse_text(text, filename=filename, env=env, source=source), catalog, skip_missing_apis)


def _finish(parsed: ParsedConfig, catalog: Catalog | None, skip_missing_apis: bool) -> LoadedConfig:
    resolution = resolve_providers(
        parsed.providers, catalog or Catalog.from_entry_points(), parsed.report, skip_missing_apis=skip_missing_apis
    )
    models, shields = parsed.resources(resolution.skipped)
    parsed.report.raise_if_problems()
    return LoadedConfig(
        parsed.run, resolution.providers, parsed.report.warnings, resolution.missing_apis, parsed.source,
        models, shields,
    )
