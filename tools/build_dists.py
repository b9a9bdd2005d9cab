#!/usr/bin/env python3
"""Build the sdist and wheel of every distribution a release publishes, and check their metadata.

    python3 tools/build_dists.py                    # into dist/, then twine check --strict
    python3 tools/build_dists.py --no-isolation     # with the build backend already installed (offline)
    python3 tools/build_dists.py --list             # the distributions, one a line (the release matrix)
    python3 tools/build_dists.py --expect-version 0.1.0   # a release: every distribution must be this version

The distributions are the core (the repository root, distribution ``stackd-server``) and every
``plugins/stackd-provider-*``; the test plugin under ``tests/plugins`` is not published. Each wheel is
built from its sdist (``python -m build``'s default), so a file missing from an sdist fails here rather
than for a user. Earlier builds of the same distributions in the output folder are removed first, so the
folder holds one release.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

__all__ = ["ROOT", "build", "check", "check_version", "main", "projects"]

ROOT = Path(__file__).resolve().parent.parent


def projects(root: Path = ROOT) -> list[Path]:
    """The core first, then the plugins in name order."""
    return [root, *sorted(p.parent for p in (root / "plugins").glob("stackd-provider-*/pyproject.toml"))]


def _dist_prefix(project: Path) -> str:
    """``stackd_provider_ollama-``: how a distribution's files begin (PEP 625 / wheel name normalisation)."""
    path = project / "pyproject.toml"
    name = tomllib.loads(path.read_text()).get("project", {}).get("name")
    if not isinstance(name, str) or not name:
        raise SystemExit(f"build_dists: no [project] name in {path}")
    return _dist_prefix_of(name)


def _dist_prefix_of(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower() + "-"


def build(outdir: Path, *, isolation: bool = True, only: list[str] | None = None) -> list[Path]:
    """Build each project (or those named in ``only``) into ``outdir``; return the files made."""
    if only is not None:
        known = [_dist_prefix(p)[:-1].replace("_", "-") for p in projects()]
        only = [_dist_prefix_of(name)[:-1].replace("_", "-") for name in only]
        unknown = sorted(set(only) - set(known))
        if unknown:  # e.g. the core's name before it was stackd-server: building nothing would look like success
            raise SystemExit(f"build_dists: --only {', '.join(unknown)}: no such distribution here; "
                             f"the distributions are {', '.join(known)}")
    outdir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for project in projects():
        prefix = _dist_prefix(project)
        if only is not None and prefix[:-1].replace("_", "-") not in only:
            continue
        for old in outdir.glob(prefix + "*"):
            if old.name[len(prefix):][:1].isdigit():  # stackd_server-0.1.0..., not stackd_server_x-...
                old.unlink()
        before = set(outdir.iterdir())
        cmd = [sys.executable, "-m", "build", "--outdir", str(outdir), str(project)]
        if not isolation:
            cmd.insert(3, "--no-isolation")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"build_dists: building {project} failed:\n{done.stdout}{done.stderr}")
        new = sorted(set(outdir.iterdir()) - before)
        print(f"built {', '.join(p.name for p in new)}")
        made += new
    return made


def check_version(files: list[Path], version: str) -> None:
    """A release tag names one version: a distribution left at another would publish the wrong thing."""
    wrong = [p.name for p in files if p.name.split("-", 2)[1].removesuffix(".tar.gz") != version]
    if wrong:
        raise SystemExit(f"build_dists: expected version {version}, but these are not: {', '.join(wrong)}; "
                         "bump the version in their pyproject.toml (the core's is stackd/__init__.py)")


def check(files: list[Path]) -> None:
    """twine's metadata check (what PyPI would refuse: a README that does not render, missing fields)."""
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], check=False)
    if done.returncode != 0:
        raise SystemExit("build_dists: twine check failed (above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--no-isolation", action="store_true", help="use the installed build backend (hatchling)")
    parser.add_argument("--no-check", action="store_true", help="skip twine check")
    parser.add_argument("--only", action="append", metavar="DISTRIBUTION", help="build only these (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the distribution names and exit")
    parser.add_argument("--expect-version", metavar="VERSION", help="fail unless every distribution is VERSION")
    args = parser.parse_args(argv)
    if args.list:
        for project in projects():
            print(_dist_prefix(project)[:-1].replace("_", "-"))
        return 0
    made = build(args.outdir, isolation=not args.no_isolation, only=args.only)
    if args.expect_version:
        check_version(made, args.expect_version.removeprefix("v"))
    if not args.no_check:
        check(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
