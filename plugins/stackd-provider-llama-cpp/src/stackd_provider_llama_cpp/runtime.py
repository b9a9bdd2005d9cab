"""Inside a model's worker process: a llama-cpp-python ``Llama`` that a request can stop between
two tokens and that counts the tokens of its last run (llama-cpp-python's streams carry no
usage), and how it is loaded. Only the worker imports this module (and so llama.cpp)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from stackd_provider_llama_cpp.config import ModelConfig
from stackd_provider_llama_cpp.loading import ModelLoadError
from stackd_provider_llama_cpp.templates import chat_handler_for

__all__ = ["CancellableLlama", "RunStats", "load_model", "system_info"]


class RunStats:
    """Token counts of one generation, written by the generating thread only."""

    __slots__ = ("completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class CancellableLlama(llama_cpp.Llama):
    """``generate`` is the one loop every completion and chat completion goes through, so a
    check there stops streaming and non-streaming calls alike, whatever chat handler runs.

    ``cancel`` and ``stats`` are set by the worker around each job; the worker's request reader
    thread sets ``cancel`` when the provider sends a cancel frame.
    """

    cancel: threading.Event | None = None
    stats: RunStats | None = None

    @classmethod
    def open(cls, cfg: ModelConfig, path: Path) -> CancellableLlama:
        kwargs: dict[str, Any] = {
            "n_ctx": cfg.n_ctx,
            "n_threads": cfg.threads,
            "n_threads_batch": cfg.threads,
            "embedding": cfg.embedding,
            "logits_all": cfg.logprobs,
            "verbose": False,
        }
        if cfg.embedding:
            # Decoder models (Gemma) default to no pooling, i.e. one vector per token;
            # the embeddings API wants one vector per input.
            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        return cls(str(path), **kwargs)

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
        cancel, stats = self.cancel, self.stats
        if stats is not None:
            stats.prompt_tokens = len(tokens)
            stats.completion_tokens = 0
        vocab = self._model.vocab
        for token in super().generate(tokens, *args, **kwargs):
            if cancel is not None and cancel.is_set():
                return
            if stats is not None and not llama_cpp.llama_vocab_is_eog(vocab, token):
                stats.completion_tokens += 1
            yield token


def load_model(cfg: ModelConfig, path: Path) -> CancellableLlama:
    """Load ``path`` into llama.cpp with ``cfg``'s settings. Raises :class:`ModelLoadError`."""
    try:
        llama = CancellableLlama.open(cfg, path)
    except Exception as exc:
        raise ModelLoadError(
            f"model {cfg.model_id!r}: llama.cpp could not load {path}: {exc}; "
            "check that the file is a GGUF model this llama-cpp-python version supports"
        ) from exc
    try:
        handler = chat_handler_for(cfg.chat_template, llama)
    except ValueError as exc:
        llama.close()
        raise ModelLoadError(f"model {cfg.model_id!r}: chat_template: {exc}") from exc
    if handler is not None:
        llama.chat_handler = handler
    return llama


def system_info() -> str:
    """llama.cpp's report of the CPU features it was built with and found (``AVX2 = 1 | ...``)."""
    raw = llama_cpp.llama_print_system_info()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
