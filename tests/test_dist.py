"""Release-ready: every distribution builds, and `pip install stackd-provider-ollama` **by name** from the built
folder gives a working server in a fresh virtual environment (what a user gets once it is published).

The distributions are built without build isolation (the test environment has hatchling), so nothing but
the runtime dependencies of the fresh venv comes from the package index."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import stackd

ROOT = Path(__file__).resolve().parent.parent
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


def test_every_distribution_has_an_sdist_and_a_wheel(dist: Path) -> None:
    v = stackd.__version__
    expected = {f"stackd-{v}.tar.gz", f"stackd-{v}-py3-none-any.whl"}
    for name in PLUGINS:
        norm = name.replace("-", "_")
        expected |= {f"{norm}-0.1.0.tar.gz", f"{norm}-0.1.0-py3-none-any.whl"}
    assert {p.name for p in dist.iterdir()} == expected


@pytest.mark.parametrize("name", PLUGINS)
def test_each_plugin_declares_the_core_range_and_its_entry_point(dist: Path, name: str) -> None:
    requires, eps = metadata(next(dist.glob(name.replace("-", "_") + "-*.whl")))
    (core,) = [Requirement(r) for r in requires if Requirement(r).name == "stackd"]
    assert core.specifier.contains(stackd.__version__)
    assert not core.specifier.contains("0.2.0"), "a plugin must not claim the next, incompatible, core"
    provider_type = name.removeprefix("stackd-provider-")
    assert f"::{provider_type} = " in eps and "[stackd.providers]" in eps


def test_the_core_wheel_carries_its_data_and_types(dist: Path) -> None:
    with zipfile.ZipFile(next(dist.glob("stackd-*.whl"))) as zf:
        names = set(zf.namelist())
    assert {"stackd/starter.yaml", "stackd/py.typed", "stackd/cli.py"} <= names
    assert not any(n.startswith(("tests/", "plugins/")) for n in names)


@pytest.mark.timeout(1200)
def test_ollama_plugin_installs_by_name_and_serves(dist: Path, fresh_venv: Any) -> None:
    fresh_venv.run("pip", "install", "--find-links", str(dist), "stackd-provider-ollama")
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
