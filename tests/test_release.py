"""The release workflow publishes exactly the distributions tools/build_dists.py builds, with trusted
publishing (OIDC, no stored token), from a tag; the changelog names each of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def distributions() -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_dists.py"), "--list"],
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.split()


def test_the_workflow_publishes_every_distribution_by_trusted_publishing() -> None:
    flow = YAML(typ="safe").load(WORKFLOW.read_text())
    assert flow["on"] == {"push": {"tags": ["v*"]}}
    assert flow["permissions"] == {"contents": "read"}
    jobs = flow["jobs"]
    plugins = jobs["publish-plugins"]["strategy"]["matrix"]["distribution"]
    assert ["stackd-server", *plugins] == distributions()
    assert jobs["publish-core"]["environment"]["url"] == "https://pypi.org/p/stackd-server"
    select = " ".join(step.get("run", "") for step in jobs["publish-core"]["steps"])
    assert "mv all/stackd_server-[0-9]* dist/" in select  # the core's files, not stackd_provider_*
    for name in ("publish-core", "publish-plugins"):
        job = jobs[name]
        assert job["permissions"] == {"id-token": "write"}
        assert job["steps"][-1]["uses"] == "pypa/gh-action-pypi-publish@release/v1"
        assert "password" not in job["steps"][-1].get("with", {})  # no API token: trusted publishing
    assert jobs["publish-plugins"]["needs"] == "publish-core"
    build = " ".join(step.get("run", "") for step in jobs["build"]["steps"])
    assert "tools/build_dists.py --outdir dist --expect-version" in build


def test_the_changelog_names_every_distribution() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    missing = [d for d in distributions() if f"`{d}`" not in unreleased]
    assert missing == [], f"name these distributions in CHANGELOG.md's Unreleased section: {missing}"
