"""Release-ready: every distribution builds, and `pip install stackd-provider-ollama` **by name** from the built
folder gives a working server in a fresh virtual environment (what a user gets once it is published).

The core's distribution is `stackd-server`: the PyPI name `stackd` is an unrelated project (0.1 ... 0.94), whose
`stackd 0.1` a requirement `stackd>=0.1.0,<0.2` would accept. No file may name it as a requirement, and the
by-name install must take nothing called `stackd` from anywhere.

The distributions are built without build isolation (the test environment has hatchling), so nothing but
the runtime dependencies of the fresh venv comes from the package index."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import stackd

ROOT = Path(__file__).resolve().parent.parent
CORE = "stackd-server"
FOREIGN = "stackd"  # the PyPI project that is not ours
PLUGINS = ["stackd-provider-bedrock", "stackd-provider-llama-cpp", "stackd-provider-llama-guard",
           "stackd-provider-ollama", "stackd-provider-vllm"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_dists.py"), "--no-isolation", "--no-check", "--outdir", str(out),
         "--expect-version", stackd.__version__],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def metadata(wheel: Path) -> tuple[list[str], str]:
    """(Requires-Dist lines, entry_points.txt) of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(info).decode()
        eps = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    return [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist: ")], eps


def test_the_core_names_its_distribution() -> None:
    assert stackd.DISTRIBUTION == CORE
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == CORE


def pyprojects() -> list[Path]:
    return [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml")),
            *sorted(ROOT.glob("tests/plugins/*/pyproject.toml"))]


@pytest.mark.parametrize("path", pyprojects(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_project_requires_the_foreign_stackd(path: Path) -> None:
    project = tomllib.loads(path.read_text())["project"]
    lines = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    names = {canonicalize_name(Requirement(line).name) for line in lines}
    assert FOREIGN not in names, f"{path}: require {CORE}, not {FOREIGN} (an unrelated PyPI project)"
    if path.parent != ROOT:
        assert CORE in names, f"{path}: a plugin declares the core range it works with ({CORE}>=...,<...)"


# `stackd[redis]`, `stackd${EXTRAS}`, `stackd>=0.1`, `'stackd==0.1.0'`: the foreign name used as a requirement in
# a command or a file. Not the import package (`stackd.x`), the command (`stackd serve`) or stackd-provider-*.
_FOREIGN_REQUIREMENT = re.compile(r"(?<![\w./-])stackd(\[[^\]\s]+\]|\$\{|\s*(?:[<>=!~]=|[<>])\s*\d)")
# Where the old requirement is quoted on purpose: the changelog's account of the rename, the refusal's test.
_ALLOWED = {"CHANGELOG.md", "tests/test_plugin_contract.py", "tests/test_dist.py"}


def test_no_file_names_the_foreign_stackd_as_a_requirement() -> None:
    suffixes = {".py", ".md", ".toml", ".ini", ".yaml", ".yml", ".cfg", ".txt", ""}
    tops = ["README.md", "CHANGELOG.md", "pyproject.toml", "tox.ini", ".ci", ".github", "bench", "deploy", "docs",
            "examples", "plugins", "stackd", "tests", "tools"]
    paths = [ROOT / top for top in tops if (ROOT / top).is_file()]
    paths += [p for top in tops if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*") if p.is_file()]
    found = []
    for path in sorted(paths):
        rel = path.relative_to(ROOT).as_posix()
        if (path.suffix not in suffixes or rel in _ALLOWED
                or any(part in ("build", "dist", "__pycache__") or part.endswith(".egg-info") for part in path.parts)):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if _FOREIGN_REQUIREMENT.search(line)]
    assert found == [], f"these name the PyPI project {FOREIGN!r}, not stackd's core {CORE!r}:\n" + "\n".join(found)


def test_every_distribution_has_an_sdist_and_a_wheel(dist: Path) -> None:
    v = stackd.__version__
    expected = {f"stackd_server-{v}.tar.gz", f"stackd_server-{v}-py3-none-any.whl"}
    for name in PLUGINS:
        norm = name.replace("-", "_")
        expected |= {f"{norm}-0.1.0.tar.gz", f"{norm}-0.1.0-py3-none-any.whl"}
    assert {p.name for p in dist.iterdir()} == expected


@pytest.mark.parametrize("name", PLUGINS)
def test_each_plugin_declares_the_core_range_and_its_entry_point(dist: Path, name: str) -> None:
    requires, eps = metadata(next(dist.glob(name.replace("-", "_") + "-*.whl")))
    names = [Requirement(r).name for r in requires]
    assert FOREIGN not in names
    (core,) = [Requirement(r) for r in requires if Requirement(r).name == CORE]
    assert core.specifier.contains(stackd.__version__)
    assert not core.specifier.contains("0.2.0"), "a plugin must not claim the next, incompatible, core"
    provider_type = name.removeprefix("stackd-provider-")
    assert f"::{provider_type} = " in eps and "[stackd.providers]" in eps


def test_the_core_wheel_carries_its_data_and_types(dist: Path) -> None:
    (wheel,) = dist.glob("stackd_server-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"stackd_server-{stackd.__version__}.dist-info/METADATA").decode()
        eps = zf.read(f"stackd_server-{stackd.__version__}.dist-info/entry_points.txt").decode()
    assert f"Name: {CORE}\n" in meta
    assert "[console_scripts]\nstackd = stackd.cli:main" in eps  # the command keeps its name
    assert {"stackd/starter.yaml", "stackd/py.typed", "stackd/cli.py"} <= names
    assert not any(n.startswith(("tests/", "plugins/")) for n in names)


@pytest.mark.timeout(1200)
def test_ollama_plugin_installs_by_name_and_serves(dist: Path, fresh_venv: Any) -> None:
    report = fresh_venv.root / "install.json"
    fresh_venv.run("pip", "install", "--report", str(report), "--find-links", str(dist), "stackd-provider-ollama")
    # Where pip took each distribution from: ours from the folder, and nothing named stackd from anywhere.
    installed = {item["metadata"]["name"].lower(): item["download_info"]["url"]
                 for item in json.loads(report.read_text())["install"]}
    assert FOREIGN not in installed
    assert installed[CORE] == (dist / f"stackd_server-{stackd.__version__}-py3-none-any.whl").as_uri()
    assert installed["stackd-provider-ollama"].startswith(dist.as_uri())
    ours = fresh_venv.run("python", "-c", "import importlib.metadata as m; print(sorted(d.metadata['Name'] "
                          "for d in m.distributions() if 'stackd' in d.metadata['Name']))")
    assert ours.stdout.strip() == str(sorted([CORE, "stackd-provider-ollama"]))
    # The core came along, and it is this one (from the folder: it knows the plugin contract).
    shown = fresh_venv.run("python", "-c", "import stackd; print(stackd.__version__, stackd.PLUGIN_CONTRACT)")
    assert shown.stdout.split() == [stackd.__version__, "1"]

    listed = fresh_venv.run("stackd", "providers").stdout
    assert listed.splitlines()[0] == "remote::ollama  (stackd-provider-ollama 0.1.0)"
    assert "BROKEN" not in listed

    checked = fresh_venv.run("stackd", "validate", str(ROOT / "examples" / "ollama.yaml"))
    assert "warning" not in checked.stderr

    fake = fresh_venv.start("python", "-m", "stackd_provider_ollama.fake", "--port", "0", "--model", "llama3.2:3b",
                            "--model", "all-minilm=384", "--reply", "hello from ollama")
    fake_url = fake.wait_line(lambda line: line.startswith("fake ollama listening on "), 120).split()[-1]
    server = fresh_venv.start("stackd", "serve", str(ROOT / "examples" / "ollama.yaml"), "--port", "0",
                              "--env", f"OLLAMA_URL={fake_url}")
    url = server.wait_serving(120)

    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as resp:
        models = [m["identifier"] for m in json.load(resp)["data"]]
    assert sorted(models) == ["all-minilm", "llama3.2:3b"]
    body = json.dumps({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.load(resp)
    assert answer["choices"][0]["message"]["content"] == "hello from ollama"
