"""A newcomer can write a provider plugin from docs/plugins.md alone: the files of its template section,
taken from the page as they are, install with pip into a fresh virtual environment beside a stackd built
from this checkout, and are served, with no change in the core."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def template_files() -> dict[str, str]:
    """{relative path: text} of every fenced block of the template section whose first line names a file."""
    page = (ROOT / "docs" / "plugins.md").read_text()
    section = page.split("## A complete plugin to start from", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```(?:toml|python)\n(.*?)```", section, re.S):
        first, _, rest = block.partition("\n")
        assert first.startswith("# stackd-provider-hello/"), first
        files[first.removeprefix("# ")] = rest
    return files


def test_the_template_names_its_files() -> None:
    assert sorted(template_files()) == [
        "stackd-provider-hello/pyproject.toml",
        "stackd-provider-hello/src/stackd_provider_hello/__init__.py",
        "stackd-provider-hello/src/stackd_provider_hello/config.py",
        "stackd-provider-hello/src/stackd_provider_hello/inference.py",
    ]


def _run(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}:\n{done.stdout}{done.stderr}"
    return done


@pytest.mark.timeout(1200)
def test_a_plugin_made_from_the_template_is_served(tmp_path: Path) -> None:
    for rel, text in template_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKD_", "VIRTUAL_ENV", "PYTHON"))}
    env |= {"STACKD_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    dist = tmp_path / "dist"
    _run(sys.executable, str(ROOT / "tools" / "build_dists.py"), "--no-isolation", "--no-check", "--only", "stackd",
         "--outdir", str(dist), env=env)
    _run(sys.executable, "-m", "venv", str(tmp_path / "venv"), env=env)
    bin_ = tmp_path / "venv" / "bin"
    # The plugin is built with the backend its pyproject names (hatchling, from the index like any user's).
    _run(str(bin_ / "pip"), "install", "--find-links", str(dist), str(tmp_path / "stackd-provider-hello"), env=env)

    listed = _run(str(bin_ / "stackd"), "providers", env=env).stdout
    assert listed.splitlines()[0] == "inline::hello  (stackd-provider-hello 0.1.0)"
    assert "config.greeting: str = 'Hello'" in listed

    page = (ROOT / "docs" / "plugins.md").read_text().split("## A complete plugin to start from", 1)[1]
    config = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "run.yaml").write_text(config)
    _run(str(bin_ / "stackd"), "validate", str(tmp_path / "run.yaml"), env=env)

    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(bin_ / "stackd"), "serve", str(tmp_path / "run.yaml"), "--port", "0"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline and server.poll() is None:
            url = next((ln.rsplit(" on ", 1)[1].strip() for ln in log.read_text().splitlines() if " serving " in ln),
                       None)
            time.sleep(0.1)
        assert url, log.read_text()
        body = json.dumps({"model": "hello-1", "messages": [{"role": "user", "content": "ping"}]}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.load(resp)
        assert answer["choices"][0]["message"]["content"] == "Hi, you said: ping"
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(
            {"model": "hello-1", "stream": True, "messages": [{"role": "user", "content": "ping"}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            frames = [ln for ln in resp.read().decode().splitlines() if ln.startswith("data: ")]
        text = "".join(json.loads(f[6:])["choices"][0]["delta"].get("content", "")
                       for f in frames if f != "data: [DONE]")
        assert text == "Hi, you said: ping"
    finally:
        server.terminate()
        server.wait(timeout=30)
