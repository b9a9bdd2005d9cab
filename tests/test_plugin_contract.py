"""A plugin made for another stackd is refused when it loads, naming both versions and its distribution:
never an AttributeError in the middle of a request."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import stackd
from stackd import PLUGIN_CONTRACT
from stackd.loading import ConfigError, parse_config
from stackd.providers.discovery import Catalog, PluginLoadError


def config_of(provider_type: str) -> str:
    return f"apis: [inference]\nproviders:\n  inference:\n  - provider_id: x\n    provider_type: {provider_type}\n"


def test_the_core_states_its_contract() -> None:
    assert PLUGIN_CONTRACT == 1


def test_plugin_written_for_another_contract_is_refused_at_load() -> None:
    """tests/plugins/stackd-provider-echo declares inline::future with contract=2."""
    with pytest.raises(ConfigError) as info:
        parse_config(config_of("inline::future"), filename="run.yaml", env={})
    (problem,) = info.value.problems
    assert str(problem) == (
        "plugin stackd-provider-echo 0.1.0 (entry point 'stackd_provider_echo.future:spec') was written for "
        f"plugin contract 2 and stackd {stackd.__version__} implements plugin contract 1: install a release of "
        "stackd-provider-echo made for plugin contract 1, or a newer stackd "
        "@ $.providers.inference[0].provider_type (run.yaml:5:20)"
    )


def test_a_refused_plugin_breaks_only_the_configs_that_use_it() -> None:
    loaded = parse_config(config_of("inline::echo"), filename="run.yaml", env={})
    assert list(loaded.providers) == ["x"]


def test_providers_command_reports_the_refused_plugin(run_cli: object) -> None:
    done = run_cli("providers")  # type: ignore[operator]
    assert done.returncode == 0, done.stderr
    blocks = {b.splitlines()[0].split()[0]: b for b in done.stdout.strip().split("\n\n")}
    assert "BROKEN" in blocks["inline::future"]
    assert "plugin contract 2" in blocks["inline::future"]
    assert "BROKEN" not in blocks["inline::echo"]


def _dist_on_disk(site: Path, requires: str,
                  source: str = "raise AttributeError('module stackd has no attribute OldThing')\n") -> None:
    """A real installed distribution (dist-info on sys.path), as pip lays one out."""
    pkg = site / "stackd_provider_oldcore"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(source)
    info = site / "stackd_provider_oldcore-0.0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(textwrap.dedent(f"""\
        Metadata-Version: 2.1
        Name: stackd-provider-oldcore
        Version: 0.0.9
        Requires-Dist: {requires}
        Requires-Dist: pytest; extra == "test"
        """))
    (info / "entry_points.txt").write_text('[stackd.providers]\nremote::oldcore = stackd_provider_oldcore:spec\n')
    (info / "RECORD").write_text("")


def test_plugin_for_another_stackd_range_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip keeps the pair matched at install; --no-deps, an editable checkout or a later
    `pip install stackd-server==...` can still leave a plugin beside a stackd it was not made for."""
    _dist_on_disk(tmp_path, "Stackd_Server<0.1,>=0.0.1")  # names compare as pip compares them
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = Catalog.from_entry_points(only=["remote::oldcore"]).plugins["remote::oldcore"]
    with pytest.raises(PluginLoadError) as info:
        plugin.load()
    assert str(info.value) == (
        "plugin stackd-provider-oldcore 0.0.9 (entry point 'stackd_provider_oldcore:spec') works with "
        f"Stackd_Server<0.1,>=0.0.1 and this is stackd {stackd.__version__}: install the stackd-provider-oldcore "
        f"made for this stackd (pip install 'stackd-provider-oldcore' 'stackd-server=={stackd.__version__}') "
        "or the stackd it asks for (pip install 'Stackd_Server<0.1,>=0.0.1')"
    )


def test_plugin_requiring_the_foreign_stackd_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PyPI name `stackd` is an unrelated project, and its 0.1 is inside `stackd>=0.1.0,<0.2`: a plugin
    written before the core was `stackd-server` would have pip install that project beside it."""
    _dist_on_disk(tmp_path, "stackd>=0.1.0,<0.2")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = Catalog.from_entry_points(only=["remote::oldcore"]).plugins["remote::oldcore"]
    with pytest.raises(PluginLoadError) as info:
        plugin.load()
    assert str(info.value) == (
        "plugin stackd-provider-oldcore 0.0.9 (entry point 'stackd_provider_oldcore:spec') requires "
        "'stackd<0.2,>=0.1.0', but the distribution 'stackd' on PyPI is an unrelated project: stackd's core is "
        "the distribution stackd-server. Change the plugin's dependency to 'stackd-server<0.2,>=0.1.0' and "
        "reinstall it; if pip installed that project (pip show stackd), pip uninstall stackd and then "
        f"pip install --force-reinstall 'stackd-server=={stackd.__version__}'"
    )


def test_plugin_in_range_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist_on_disk(tmp_path, f"stackd-server>={stackd.__version__},<99")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = Catalog.from_entry_points(only=["remote::oldcore"]).plugins["remote::oldcore"]
    with pytest.raises(PluginLoadError, match="failed to import: AttributeError: module stackd has no attribute"):
        plugin.load()


def test_plugin_whose_spec_names_no_contract_is_refused_with_that_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin written before ProviderSpec had ``contract=``: refused by name, not a TypeError from attrs."""
    _dist_on_disk(tmp_path, f"stackd-server>={stackd.__version__},<99", textwrap.dedent("""\
        import attrs
        from stackd import ProviderSpec

        @attrs.define
        class Config:
            pass

        async def build(config, deps):
            return object()

        spec = ProviderSpec(api="inference", provider_type="remote::oldcore", config_class=Config, factory=build)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = Catalog.from_entry_points(only=["remote::oldcore"]).plugins["remote::oldcore"]
    with pytest.raises(PluginLoadError) as info:
        plugin.load()
    assert "was written for no plugin contract (its ProviderSpec has no contract=" in str(info.value)
    assert str(info.value).endswith("made for plugin contract 1, or an older stackd")
