#!/usr/bin/env python3
"""Build llama-cpp-python once, portable, into a wheelhouse; optionally pip-install with it.

    python3 tools/llama_cpp_wheel.py --install . ./plugins/stackd-provider-llama-cpp
    python3 tools/llama_cpp_wheel.py --native --install ...    # opt in: this CPU only, faster
    python3 tools/llama_cpp_wheel.py --print-dir               # where the wheel is (or would be)

Why: llama-cpp-python is a source package, and pip compiles it with -march=native. Such a
wheel dies (SIGILL, or SIGSEGV at an AMX instruction) on a CPU, or a VM, that lacks what the
building CPU had. And pip's wheel cache is keyed on the source archive only, not on CMAKE_ARGS,
so a native wheel already in a user's cache would be reused silently whatever flags are set.

So this script never lets pip build or cache llama-cpp-python itself: it runs
``pip wheel --no-cache-dir`` with explicit flags into a directory named after those flags
(``<wheelhouse>/llama-cpp-python/<build>-<machine>-<hash>/``), reuses that wheel on every later
run, and installs with ``--only-binary llama-cpp-python --find-links <that directory>`` plus the
wheel file itself, so pip can take llama-cpp-python from nowhere else. An installed
llama-cpp-python that did not come from that file is replaced.

The wheelhouse is ``$STACKD_WHEELHOUSE``, else ``${XDG_CACHE_HOME:-~/.cache}/stackd/wheelhouse``.
``STACKD_LLAMA_CPP_BUILD=native`` does what ``--native`` does (for tox and CI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

__all__ = ["build_flags", "ensure_wheel", "main", "wheel_dir"]

SPEC = "llama-cpp-python>=0.3.36,<0.4"
# Any x86-64 CPU with AVX2 (Intel Haswell, 2013, and AMD Zen onward): no AVX-512, no AMX, which
# a -march=native build on a recent Xeon would use and a VM may not enable.
_X86_PORTABLE = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# ggml's aarch64 default without NATIVE is the baseline ARMv8-A with NEON, which every
# aarch64 CPU has.
_GENERIC_PORTABLE = "-DGGML_NATIVE=OFF"


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _cpu_flags() -> str:
    """This CPU's feature list: a native wheel is keyed on it, so that a wheelhouse in a shared
    home directory never hands it to another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def build_flags(native: bool) -> tuple[str, str]:
    """``(build name, CMAKE_ARGS)``."""
    if native:
        return "native", "-DGGML_NATIVE=ON"
    return "portable", _X86_PORTABLE if _machine() == "x86_64" else _GENERIC_PORTABLE


def _wheelhouse(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("STACKD_WHEELHOUSE"):
        return Path(os.environ["STACKD_WHEELHOUSE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "stackd" / "wheelhouse"


def wheel_dir(root: Path, native: bool, spec: str = SPEC) -> Path:
    build, cmake_args = build_flags(native)
    key = json.dumps({"spec": spec, "cmake_args": cmake_args, "machine": _machine(),
                      "cpu": _cpu_flags() if native else ""}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return root / "llama-cpp-python" / f"{build}-{_machine()}-{digest}"


def _wheels(directory: Path) -> list[Path]:
    return sorted(directory.glob("llama_cpp_python-*.whl")) if directory.is_dir() else []


def ensure_wheel(directory: Path, native: bool, spec: str = SPEC, force: bool = False) -> Path:
    """The wheel in ``directory``, built first if it is not there (or ``force``)."""
    found = _wheels(directory)
    if found and not force:
        return found[-1]
    build, cmake_args = build_flags(native)
    directory.parent.mkdir(parents=True, exist_ok=True)
    print(f"llama_cpp_wheel: building {spec} ({build}: CMAKE_ARGS={cmake_args!r}) into {directory}; "
          "this compiles llama.cpp, about 10 minutes on 2 cores, once", file=sys.stderr, flush=True)
    started = time.monotonic()
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1"}
    # A private directory, renamed into place once complete: an interrupted build never leaves a
    # wheel that a later run would take for a good one.
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".build-", ignore_cleanup_errors=True) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", tmp, spec],
            env=env, check=True,
        )
        built = _wheels(Path(tmp))
        if len(built) != 1:
            raise SystemExit(f"llama_cpp_wheel: expected one wheel in {tmp}, found {built}")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    wheel = _wheels(directory)[-1]
    print(f"llama_cpp_wheel: built {wheel.name} in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
    return wheel


def _installed_from(wheel: Path) -> bool:
    """Whether this interpreter's llama-cpp-python was installed from ``wheel``."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return False
    origin = dist.read_text("direct_url.json")
    url = json.loads(origin).get("url", "") if origin else ""
    return url.startswith("file://") and Path(unquote(url.removeprefix("file://"))).resolve() == wheel.resolve()


def _install(wheel: Path, pip_args: list[str]) -> None:
    pip = [sys.executable, "-m", "pip", "install"]
    if not _installed_from(wheel):
        # Same version, other build (a native one from pip's cache): pip would keep it.
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(wheel)], check=True)
    if pip_args:
        subprocess.run(
            [*pip, "--only-binary", "llama-cpp-python", "--find-links", str(wheel.parent), str(wheel), *pip_args],
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--native", action="store_true",
                        default=os.environ.get("STACKD_LLAMA_CPP_BUILD", "portable") == "native",
                        help="build for this CPU only (-march=native): faster here, may crash elsewhere")
    parser.add_argument("--force-rebuild", action="store_true", help="build again even if the wheel exists")
    parser.add_argument("--wheelhouse", help="root directory of the wheelhouse")
    parser.add_argument("--spec", default=SPEC, help=f"the requirement to build (default {SPEC!r})")
    parser.add_argument("--print-dir", action="store_true", help="print the wheel's directory and exit")
    parser.add_argument("--install", nargs=argparse.REMAINDER, metavar="PIP_ARGS",
                        help="then pip install the wheel and PIP_ARGS (requirements, paths, -e ...)")
    args = parser.parse_args(argv)
    directory = wheel_dir(_wheelhouse(args.wheelhouse), args.native, args.spec)
    if args.print_dir:
        print(directory)
        return 0
    wheel = ensure_wheel(directory, args.native, args.spec, args.force_rebuild)
    print(wheel)
    if args.install is not None:
        _install(wheel, args.install)
    return 0


if __name__ == "__main__":
    sys.exit(main())
