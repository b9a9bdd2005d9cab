"""``inline::llama-cpp``: the InferenceProvider that runs GGUF models in this process."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs

from stackd import CallContext, Model
from stackd.errors import BadRequest, FieldError, NotFound, StackdError, UpstreamUnavailable
from stackd_provider_llama_cpp.config import LlamaCppConfig, ModelConfig
from stackd_provider_llama_cpp.loading import ModelLoadError, load_model
from stackd_provider_llama_cpp.params import chat_kwargs, completion_kwargs, include_usage
from stackd_provider_llama_cpp.runtime import CancellableLlama, RunStats
from stackd_provider_llama_cpp.worker import ModelWorker

__all__ = ["LlamaCppInference", "create"]

log = logging.getLogger("stackd.providers.llama_cpp")

PROVIDER_TYPE = "inline::llama-cpp"


async def create(config: LlamaCppConfig, deps: Mapping[str, Any]) -> LlamaCppInference:
    """Return at once; the models load in a worker thread (see :meth:`LlamaCppInference.is_ready`)."""
    provider = LlamaCppInference(config, str(deps.get("__provider_id__", "llama-cpp")))
    provider.start_loading()
    return provider


class LlamaCppInference:
    def __init__(self, config: LlamaCppConfig, provider_id: str) -> None:
        self.config = config
        self.provider_id = provider_id
        self._workers: dict[str, ModelWorker] = {}
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "failed" if self._load_error else "ready" if self.is_ready() else "loading"
        models = [m.model_id for m in self.config.models]
        return f"<LlamaCppInference {self.provider_id} models={models} {state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(
            self._load_all(), name=f"{PROVIDER_TYPE} {self.provider_id}: load models"
        )

    async def _load_all(self) -> None:
        started = time.monotonic()
        for cfg in self.config.models:
            try:
                llama = await asyncio.to_thread(load_model, cfg)
            except ModelLoadError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # a bug or a llama.cpp surprise: still report, never hang
                log.exception("llama-cpp: model %s: unexpected load failure", cfg.model_id)
                self._fail(f"model {cfg.model_id!r} ({cfg.source()}): {type(exc).__name__}: {exc}")
                return
            if self._closed:
                llama.close()
                return
            self._workers[cfg.model_id] = ModelWorker(cfg.model_id, llama)
        log.info(
            "llama-cpp: provider %s: %d model(s) ready in %.1f s",
            self.provider_id,
            len(self._workers),
            time.monotonic() - started,
        )

    def _fail(self, message: str) -> None:
        self._load_error = message
        log.error("llama-cpp: provider %s: loading failed: %s", self.provider_id, message)

    def is_ready(self) -> bool:
        return self._load_error is None and len(self._workers) == len(self.config.models)

    async def health(self) -> dict[str, Any]:
        if self._load_error is not None:
            return {"status": "Error", "message": f"model loading failed: {self._load_error}"}
        if not self.is_ready():
            return {"status": "Error", "message": "model loading: not all models are loaded yet"}
        return {"status": "OK"}

    async def list_models(self) -> list[str]:
        return [m.model_id for m in self.config.models]

    async def close(self) -> None:
        self._closed = True
        if self._load_task is not None and not self._load_task.done():
            # A llama.cpp load cannot be interrupted; let it finish so its memory is freed.
            await asyncio.shield(self._load_task)
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            try:
                await asyncio.to_thread(worker.close)
            except Exception:
                log.exception("llama-cpp: model %s: closing failed", worker.name)

    # -- routing -----------------------------------------------------------------------------

    def _model_config(self, model_id: str) -> ModelConfig:
        cfg = self.config.get(model_id)
        if cfg is None:
            raise NotFound(
                f"model {model_id!r} is not configured in {PROVIDER_TYPE} provider {self.provider_id!r}; "
                f"it serves: {', '.join(m.model_id for m in self.config.models)} "
                "(add a model under the provider's config.models to serve another GGUF)"
            )
        return cfg

    def _worker(self, model_id: str) -> tuple[ModelWorker, ModelConfig]:
        cfg = self._model_config(model_id)
        if self._load_error is not None:
            raise UpstreamUnavailable(
                f"{PROVIDER_TYPE} provider {self.provider_id!r}: model loading failed: {self._load_error}"
            )
        worker = self._workers.get(model_id)
        if worker is None or not self.is_ready():
            raise UpstreamUnavailable(
                f"{PROVIDER_TYPE} provider {self.provider_id!r}: model loading; retry in a few seconds",
                headers={"Retry-After": "2"},
            )
        return worker, cfg

    def _generator(self, model_id: str) -> tuple[ModelWorker, ModelConfig]:
        worker, cfg = self._worker(model_id)
        if cfg.embedding:
            raise BadRequest(
                f"model {model_id!r} of {PROVIDER_TYPE} provider {self.provider_id!r} is configured with "
                "embedding: true and serves only embeddings; configure a second entry without it for text"
            )
        return worker, cfg

    async def register_model(self, model: Model) -> Model:
        cfg = self._model_config(model.provider_resource_id)
        if model.model_type == "embedding" and not cfg.embedding:
            raise BadRequest(
                f"model {cfg.model_id!r} of {PROVIDER_TYPE} provider {self.provider_id!r} is not loaded for "
                "embeddings; set `embedding: true` for it under the provider's config.models"
            )
        if model.model_type == "llm" and cfg.embedding:
            raise BadRequest(
                f"model {cfg.model_id!r} of {PROVIDER_TYPE} provider {self.provider_id!r} is configured with "
                "embedding: true; register it with model_type: embedding"
            )
        if model.model_type != "embedding" or "embedding_dimension" in model.metadata:
            return model
        # The dimension is known only once llama.cpp has read the file. Set
        # metadata.embedding_dimension in the config to skip this wait.
        if model.provider_resource_id not in self._workers and self._load_task is not None:
            await asyncio.shield(self._load_task)
        worker, _ = self._worker(model.provider_resource_id)
        return attrs.evolve(model, metadata={**model.metadata, "embedding_dimension": worker.llama.n_embd()})

    # -- inference ---------------------------------------------------------------------------

    async def openai_chat_completion(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        worker, cfg = self._generator(str(params.get("model")))
        kwargs = chat_kwargs(params, cfg)
        return await self._generate(
            worker,
            cfg,
            lambda llama: llama.create_chat_completion(**kwargs),
            kwargs,
            params,
            "chat.completion.chunk",
        )

    async def openai_completion(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        worker, cfg = self._generator(str(params.get("model")))
        kwargs = completion_kwargs(params, cfg)
        return await self._generate(
            worker, cfg, lambda llama: llama.create_completion(**kwargs), kwargs, params, "text_completion"
        )

    async def _generate(
        self,
        worker: ModelWorker,
        cfg: ModelConfig,
        job: Callable[[CancellableLlama], Any],
        kwargs: dict[str, Any],
        params: dict[str, Any],
        chunk_object: str,
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        on_error = _error_mapper(cfg)
        if not kwargs["stream"]:
            try:
                result, _ = await worker.run(job)
            except (ValueError, RuntimeError) as exc:
                raise on_error(exc) from exc
            return result  # type: ignore[no-any-return]
        tail = _usage_tail(chunk_object) if include_usage(params) else None
        return await worker.stream(job, on_error, tail)

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        model_id = str(params.get("model"))
        worker, cfg = self._worker(model_id)
        if not cfg.embedding:
            raise BadRequest(
                f"model {model_id!r} of {PROVIDER_TYPE} provider {self.provider_id!r} does not serve "
                "embeddings; set `embedding: true` for it under the provider's config.models "
                "(or configure a second entry of the same GGUF with embedding: true)"
            )
        raw = params.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest(
                "input must be a non-empty string or a list of strings",
                [FieldError("$.input", "expected a string or a list of strings")],
            )
        dims = worker.llama.n_embd()
        if params.get("dimensions") not in (None, dims):
            raise BadRequest(
                f"model {model_id!r} produces {dims}-dimensional embeddings; omit dimensions or send {dims}",
                [FieldError("$.dimensions", f"must be {dims}")],
            )
        encoding = params.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                "encoding_format must be float or base64",
                [FieldError("$.encoding_format", "float or base64")],
            )
        try:
            (vectors, tokens), _ = await worker.run(
                lambda llama: llama.embed(texts, normalize=True, truncate=True, return_count=True)
            )
        except (ValueError, RuntimeError) as exc:
            raise _error_mapper(cfg)(exc) from exc
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                for i, v in enumerate(vectors)
            ],
            "model": params.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _error_mapper(cfg: ModelConfig) -> Callable[[BaseException], BaseException]:
    """llama-cpp-python reports bad requests (prompt longer than n_ctx, unknown tool) as
    ValueError; anything else stays as it is and becomes a 500 with the details logged."""

    def mapped(exc: BaseException) -> BaseException:
        if isinstance(exc, StackdError):
            return exc
        if isinstance(exc, ValueError):
            return BadRequest(f"model {cfg.model_id!r} (n_ctx={cfg.n_ctx}): {exc}")
        return exc

    return mapped


def _usage_tail(chunk_object: str) -> Callable[[dict[str, Any], RunStats], dict[str, Any]]:
    """OpenAI's ``stream_options.include_usage``: one last chunk with no choices and the usage."""

    def tail(last: dict[str, Any], stats: RunStats) -> dict[str, Any]:
        return {
            "id": last.get("id"),
            "object": chunk_object,
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [],
            "usage": stats.usage(),
        }

    return tail
