"""tools/llama_cpp_wheel.py: the wheelhouse is keyed by the build flags, and a wheel once built is
reused without pip (whose cache would ignore the flags) ever building llama-cpp-python again."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "llama_cpp_wheel.py"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_cpp_wheel", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_portable_flags_have_no_native_code(tool: ModuleType) -> None:
    name, flags = tool.build_flags(native=False)
    assert name == "portable"
    assert "-DGGML_NATIVE=OFF" in flags
    assert "AVX512" not in flags and "AMX" not in flags
    assert tool.build_flags(native=True) == ("native", "-DGGML_NATIVE=ON")


def test_the_wheel_directory_is_keyed_by_the_flags_and_the_spec(tool: ModuleType, tmp_path: Path) -> None:
    portable = tool.wheel_dir(tmp_path, native=False)
    native = tool.wheel_dir(tmp_path, native=True)
    assert portable != native
    assert portable.name.startswith("portable-") and native.name.startswith("native-")
    assert tool.wheel_dir(tmp_path, native=False) == portable  # stable across runs
    assert tool.wheel_dir(tmp_path, native=False, spec="llama-cpp-python==0.3.36") != portable


def test_an_existing_wheel_is_reused_without_building(tool: ModuleType, tmp_path: Path) -> None:
    directory = tool.wheel_dir(tmp_path, native=False)
    directory.mkdir(parents=True)
    wheel = directory / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel: building would have replaced it")
    # No pip runs here: the tool returns the wheel that is there.
    assert tool.ensure_wheel(directory, native=False) == wheel
    assert tool.main(["--wheelhouse", str(tmp_path), "--print-dir"]) == 0


def test_print_dir_honours_the_environment(tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STACKD_WHEELHOUSE", str(tmp_path))
    monkeypatch.setenv("STACKD_LLAMA_CPP_BUILD", "native")
    assert tool.main(["--print-dir"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tool.wheel_dir(tmp_path, native=True)
