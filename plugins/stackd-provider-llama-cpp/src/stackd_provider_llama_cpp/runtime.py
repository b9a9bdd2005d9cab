"""A llama-cpp-python ``Llama`` that a request can stop between two tokens and that counts
the tokens of its last run (llama-cpp-python's streams carry no usage)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from stackd_provider_llama_cpp.config import ModelConfig

__all__ = ["CancellableLlama", "RunStats"]


class RunStats:
    """Token counts of one generation, written by the worker thread only."""

    __slots__ = ("completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class CancellableLlama(llama_cpp.Llama):
    """``generate`` is the one loop every completion and chat completion goes through, so a
    check there stops streaming and non-streaming calls alike, whatever chat handler runs.

    ``cancel`` and ``stats`` are set by the model's single worker thread around each job.
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
