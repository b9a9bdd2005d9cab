"""Inside a model's worker process: what one ``run`` frame asks llama.cpp to do.

Every function here blocks on llama.cpp and runs on the worker's main thread; ``send`` writes
a frame to the provider. Errors a client caused come back as ``error`` frames with the type the
provider turns into a status: ``bad_request`` (400, with field errors), ``value`` (400: what
llama-cpp-python reports as ValueError, such as a prompt longer than n_ctx) and ``internal`` (500).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from stackd_provider_llama_cpp.config import ModelConfig
from stackd_provider_llama_cpp.runtime import CancellableLlama, RunStats

__all__ = ["JobError", "model_info", "run_job", "self_check"]

Send = Callable[[dict[str, Any]], None]


class JobError(Exception):
    """A request llama.cpp cannot serve, with the field that is wrong."""

    def __init__(self, message: str, loc: str, msg: str) -> None:
        super().__init__(message)
        self.errors = [[loc, msg]]


def build_grammar(spec: dict[str, Any]) -> LlamaGrammar:
    """The grammar that :func:`stackd_provider_llama_cpp.params.completion_kwargs` described."""
    if "json_schema" not in spec:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(spec["json_schema"]), verbose=False)
    # llama-cpp-python's schema converter reports an unresolvable $ref with an assert.
    except (ValueError, TypeError, KeyError, AssertionError, RecursionError) as exc:
        raise JobError(
            f"inline::llama-cpp cannot turn response_format's JSON schema into a grammar: {exc}",
            "$.response_format.json_schema.schema",
            "unsupported JSON schema",
        ) from exc


def _prepare(kwargs: dict[str, Any]) -> dict[str, Any]:
    if "grammar" in kwargs:
        kwargs["grammar"] = build_grammar(kwargs["grammar"])
    if "logit_bias" in kwargs:
        kwargs["logit_bias"] = {int(k): v for k, v in kwargs["logit_bias"].items()}
    return kwargs


def run_job(llama: CancellableLlama, job_id: int, kind: str, kwargs: dict[str, Any],
            cancel: threading.Event, send: Send) -> None:
    """Run one job to its end and send its answer: ``result``, or ``chunk``... ``end``, or ``error``."""
    stats = RunStats()
    llama.cancel, llama.stats = cancel, stats
    chunks: Iterator[dict[str, Any]] | None = None
    try:
        if kind == "embed":
            vectors, tokens = llama.embed(kwargs["input"], normalize=True, truncate=True, return_count=True)
            send({"ev": "result", "id": job_id, "data": {"vectors": vectors, "tokens": tokens},
                  "stats": stats.as_dict()})
            return
        kwargs = _prepare(kwargs)
        create = llama.create_chat_completion if kind == "chat" else llama.create_completion
        if not kwargs.get("stream"):
            result = create(**kwargs)
            send({"ev": "result", "id": job_id, "data": result, "stats": stats.as_dict()})
            return
        chunks = create(**kwargs)  # type: ignore[assignment]
        assert chunks is not None
        for chunk in chunks:
            if cancel.is_set():
                break
            send({"ev": "chunk", "id": job_id, "data": chunk})
        send({"ev": "end", "id": job_id, "stats": stats.as_dict(), "cancelled": cancel.is_set()})
    except JobError as exc:
        send({"ev": "error", "id": job_id, "type": "bad_request", "message": str(exc), "errors": exc.errors})
    except ValueError as exc:
        send({"ev": "error", "id": job_id, "type": "value", "message": str(exc)})
    except Exception as exc:  # noqa: BLE001 - a job's failure is its answer; the worker serves on
        send({"ev": "error", "id": job_id, "type": "internal", "message": f"{type(exc).__name__}: {exc}"})
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        llama.cancel = llama.stats = None


def self_check(llama: CancellableLlama, cfg: ModelConfig) -> None:
    """One token (or one embedding) through llama.cpp's compute kernels, before the worker says
    it is ready: a build that cannot run on this CPU dies here (SIGILL, or SIGSEGV at an AMX
    instruction), at load, and not under a client's first request."""
    if cfg.embedding:
        llama.embed("Hello", normalize=True, truncate=True)
    else:
        llama.create_completion("Hello", max_tokens=1, temperature=0)


def model_info(llama: CancellableLlama) -> dict[str, Any]:
    """What the provider needs to know without asking the worker again."""
    return {"n_embd": llama.n_embd(), "token_eos": llama.token_eos(), "n_ctx": llama.n_ctx()}
