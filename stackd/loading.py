"""A run config, loaded whole: the file (:mod:`stackd.config`), then its plugins (:mod:`stackd.providers`).

Both passes write to one report, so ``stackd validate`` shows every problem of a file, its
plugin configs' included, in one run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    before_plugins: Callable[[RunConfig], None] | None = None,
) -> LoadedConfig:
    """The config of the file at ``path``, or :class:`ConfigError` with every problem in it.

    ``before_plugins`` sees the file's settings before any plugin is imported (a plugin's
    import may import parts of stackd that read the environment once, such as its metrics).
    """
    parsed = read_config(path, env=env)
    if before_plugins is not None and not parsed.report.problems:
        before_plugins(parsed.run)
    return _finish(parsed, catalog, skip_missing_apis)


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
    _check_guardrails(parsed, models, shields)
    parsed.report.raise_if_problems()
    return LoadedConfig(
        parsed.run, resolution.providers, parsed.report.warnings, resolution.missing_apis, parsed.source,
        models, shields,
    )


def _check_guardrails(parsed: ParsedConfig, models: list[ModelInput], shields: list[ShieldInput]) -> None:
    """A model of the file names shields of the file that will run, and is a chat model: else no
    route could apply them (``stackd validate`` says so; the server re-checks at start, API
    registrations included)."""
    served = {m.model_id for m in models}
    have = {s.shield_id for s in shields}
    for i, model in enumerate(parsed.run.models):
        if model.model_id not in served:
            continue
        for field in ("input_shields", "output_shields"):
            names = getattr(model, field)
            if names and model.model_type != "llm":
                parsed.report.error(f"$.models[{i}].{field}", "only llm models can be guarded: no route applies "
                                    "shields to an embedding model")
                continue
            for j, name in enumerate(names):
                if name not in have:
                    parsed.report.error(f"$.models[{i}].{field}[{j}]", f"shield {name!r} is not among the shields "
                                        "of this file that will run; add it under shields: (with its safety "
                                        "provider), or remove it here")
