"""A newcomer can write a provider plugin from docs/plugins.md alone: the files of its template section,
taken from the page as they are, install with pip into a fresh virtual environment beside a stackd built
from this checkout, and are served, with no change in the core."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

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


def test_the_template_requires_the_core_by_its_distribution_name() -> None:
    """`stackd` on PyPI is an unrelated project; a plugin made from the page must require stackd-server."""
    toml = template_files()["stackd-provider-hello/pyproject.toml"]
    assert 'dependencies = ["stackd-server>=0.1.0,<0.2"]' in toml


def test_the_template_names_its_files() -> None:
    assert sorted(template_files()) == [
        "stackd-provider-hello/pyproject.toml",
        "stackd-provider-hello/src/stackd_provider_hello/__init__.py",
        "stackd-provider-hello/src/stackd_provider_hello/config.py",
        "stackd-provider-hello/src/stackd_provider_hello/inference.py",
    ]


@pytest.mark.timeout(1200)
def test_a_plugin_made_from_the_template_is_served(tmp_path: Path, fresh_venv: Any) -> None:
    for rel, text in template_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    dist = tmp_path / "dist"
    fresh_venv.run(sys.executable, str(ROOT / "tools" / "build_dists.py"), "--no-isolation", "--no-check",
                   "--only", "stackd-server", "--outdir", str(dist))
    # The plugin is built with the backend its pyproject names (hatchling, from the index like any user's).
    fresh_venv.run("pip", "install", "--find-links", str(dist), str(tmp_path / "stackd-provider-hello"))

    listed = fresh_venv.run("stackd", "providers").stdout
    assert listed.splitlines()[0] == "inline::hello  (stackd-provider-hello 0.1.0)"
    assert "config.greeting: str = 'Hello'" in listed

    page = (ROOT / "docs" / "plugins.md").read_text().split("## A complete plugin to start from", 1)[1]
    (tmp_path / "run.yaml").write_text(page.split("```yaml\n", 1)[1].split("```", 1)[0])
    fresh_venv.run("stackd", "validate", str(tmp_path / "run.yaml"))
    url = fresh_venv.start("stackd", "serve", str(tmp_path / "run.yaml"), "--port", "0").wait_serving(120)

    def chat(**extra: Any) -> bytes:
        body = {"model": "hello-1", "messages": [{"role": "user", "content": "ping"}], **extra}
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return bytes(resp.read())

    assert json.loads(chat())["choices"][0]["message"]["content"] == "Hi, you said: ping"
    frames = [ln[6:] for ln in chat(stream=True).decode().splitlines() if ln.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    text = "".join(json.loads(f)["choices"][0]["delta"].get("content", "") for f in frames[:-1])
    assert text == "Hi, you said: ping"
