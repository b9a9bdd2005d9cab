"""Release-ready: every distribution builds, and `pip install stackd-provider-ollama` **by name** from the built
folder gives a working server in a fresh virtual environment (what a user gets once it is published).

The distributions are built without build isolation (the test environment has hatchling), so nothing but
the runtime dependencies of the fresh venv comes from the package index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    where = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    return where / "bin"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKD_", "VIRTUAL_ENV", "PYTHON"))}
    env["STACKD_HOME"] = str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """A background process whose first stdout line is awaited (the announcement), then stopped."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.out = cwd / f"{Path(args[0]).name}-{time.monotonic_ns()}.log"
        self._file = self.out.open("w")
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._file, stderr=subprocess.STDOUT, text=True)

    def wait_for(self, marker: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out.read_text().splitlines():
                if marker in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{marker!r} never came (rc={self.proc.poll()}):\n{self.out.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


@pytest.mark.timeout(1200)
def test_ollama_plugin_installs_by_name_and_serves(
    dist: Path, venv: Path, tmp_path: Path, processes: list[Process]
) -> None:
    env = _env(tmp_path)
    install = subprocess.run(
        [str(venv / "pip"), "install", "--find-links", str(dist), "stackd-provider-ollama"],
        capture_output=True, text=True, env=env, timeout=1000, check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # The core came along, and it is this one (from the folder: it knows the plugin contract).
    shown = subprocess.run([str(venv / "python"), "-c", "import stackd; print(stackd.__version__, "
                            "stackd.PLUGIN_CONTRACT)"], capture_output=True, text=True, env=env, check=True)
    assert shown.stdout.split() == [stackd.__version__, "1"]

    listed = subprocess.run([str(venv / "stackd"), "providers"], capture_output=True, text=True, env=env,
                            timeout=120, check=True)
    assert listed.stdout.splitlines()[0] == "remote::ollama  (stackd-provider-ollama 0.1.0)"
    assert "BROKEN" not in listed.stdout

    checked = subprocess.run([str(venv / "stackd"), "validate", str(ROOT / "examples" / "ollama.yaml")],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "warning" not in checked.stderr

    fake = Process([str(venv / "python"), "-m", "stackd_provider_ollama.fake", "--port", "0", "--model",
                    "llama3.2:3b", "--model", "all-minilm=384", "--reply", "hello from ollama"], env, tmp_path)
    processes.append(fake)
    fake_url = fake.wait_for("fake ollama listening on ").rsplit(" ", 1)[1]
    server = Process([str(venv / "stackd"), "serve", str(ROOT / "examples" / "ollama.yaml"), "--port", "0",
                      "--env", f"OLLAMA_URL={fake_url}"], env, tmp_path)
    processes.append(server)
    url = server.wait_for(" serving ").rsplit(" on ", 1)[1].strip()

    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as resp:
        models = [m["identifier"] for m in json.load(resp)["data"]]
    assert sorted(models) == ["all-minilm", "llama3.2:3b"]
    body = json.dumps({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.load(resp)
    assert answer["choices"][0]["message"]["content"] == "hello from ollama"
