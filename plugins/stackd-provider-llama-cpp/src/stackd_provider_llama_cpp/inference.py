"""``inline::llama-cpp``: the InferenceProvider that runs each GGUF model in a worker process.

A crash inside llama.cpp (a build the CPU cannot run, a bug, the OOM killer) then kills only
that model's worker: the requests it was serving fail with 502 naming the model, the signal and
the likely fix, the supervisor restarts it, and every other model and route keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs

from stackd import CallContext, Model
from stackd.errors import (
    BadRequest,
    FieldError,
    NotFound,
    StackdError,
    UpstreamBadResponse,
    UpstreamUnavailable,
)
from stackd_provider_llama_cpp.config import LlamaCppConfig, ModelConfig
from stackd_provider_llama_cpp.loading import ModelLoadError, resolve_gguf
from stackd_provider_llama_cpp.params import chat_kwargs, completion_kwargs, include_usage
from stackd_provider_llama_cpp.process import JobFailed, Usage, WorkerDied, WorkerProcess, exit_name
from stackd_provider_llama_cpp.supervisor import ModelSupervisor, remedy

__all__ = ["LlamaCppInference", "create"]

log = logging.getLogger("stackd.providers.llama_cpp")

PROVIDER_TYPE = "inline::llama-cpp"
# How long a request waits for a worker that is being restarted before it gets 503; a restart
# (process start, load, self-check) of a small model takes about a second.
RESTART_WAIT = 30.0


async def create(config: LlamaCppConfig, deps: Mapping[str, Any]) -> LlamaCppInference:
    """Return at once; the models load in their workers (see :meth:`LlamaCppInference.is_ready`)."""
    provider = LlamaCppInference(config, str(deps.get("__provider_id__", "llama-cpp")))
    provider.start_loading()
    return provider


class LlamaCppInference:
    def __init__(self, config: LlamaCppConfig, provider_id: str) -> None:
        self.config = config
        self.provider_id = provider_id
        self._supervisors: dict[str, ModelSupervisor] = {}
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "failed" if self._failure() else "ready" if self.is_ready() else "loading"
        models = [m.model_id for m in self.config.models]
        return f"<LlamaCppInference {self.provider_id} models={models} {state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(
            self._load_all(), name=f"{PROVIDER_TYPE} {self.provider_id}: load models"
        )

    async def _load_all(self) -> None:
        """Find every model's file (one after another: a package's GGUF is reassembled once even
        when two models share it), start one worker per model, and wait until each is up or failed."""
        started = time.monotonic()
        for cfg in self.config.models:
            try:
                path = await asyncio.to_thread(resolve_gguf, cfg)
            except ModelLoadError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # a bug or a surprise: still report, never hang
                log.exception("llama-cpp: model %s: unexpected load failure", cfg.model_id)
                self._fail(f"model {cfg.model_id!r} ({cfg.source()}): {type(exc).__name__}: {exc}")
                return
            if self._closed:
                return
            log.info(
                "llama-cpp: model %s: loading %s (n_ctx=%d, threads=%d%s) in a worker process",
                cfg.model_id, path, cfg.n_ctx, cfg.threads, ", embedding" if cfg.embedding else "",
            )
            supervisor = ModelSupervisor(cfg, str(path), self.provider_id)
            self._supervisors[cfg.model_id] = supervisor
            supervisor.start()
        await asyncio.gather(*(s.settled() for s in self._supervisors.values()))
        if self._failure() is None and not self._closed:
            log.info(
                "llama-cpp: provider %s: %d model(s) ready in %.1f s",
                self.provider_id, len(self._supervisors), time.monotonic() - started,
            )
            _warn_if_not_portable(next(iter(self._supervisors.values())).info.get("system_info", ""))

    def _fail(self, message: str) -> None:
        self._load_error = message
        log.error("llama-cpp: provider %s: loading failed: %s", self.provider_id, message)

    def _failure(self) -> str | None:
        """Why the provider cannot serve (a load error, or a model whose worker keeps dying at
        start), with the remedy; None when it can or is still loading."""
        if self._load_error is not None:
            return self._load_error
        return next((s.error for s in self._supervisors.values() if s.state == "failed"), None)

    def is_ready(self) -> bool:
        """True once every model's worker has started and passed its self-check. A worker being
        restarted after a crash leaves the provider ready: its model's requests wait for it."""
        return (
            self._failure() is None
            and len(self._supervisors) == len(self.config.models)
            and all(s.state != "loading" for s in self._supervisors.values())
        )

    def not_ready_reason(self) -> str | None:
        """Read by the core for ``/v1/health`` and the 503 of a call while ``is_ready()`` is False:
        the permanent failure with its remedy, or None while the models are merely loading."""
        failure = self._failure()
        return None if failure is None else f"model loading failed: {failure}"

    async def health(self) -> dict[str, Any]:
        models = {model_id: await s.health() for model_id, s in self._supervisors.items()}
        failure = self._failure()
        if failure is not None:
            return {"status": "Error", "message": f"model loading failed: {failure}", "models": models}
        if not self.is_ready():
            return {"status": "Error", "message": "model loading: not all models are loaded yet", "models": models}
        down = [f"{m} {s.state} after {s.last_exit}" for m, s in self._supervisors.items() if s.state != "up"]
        if down:
            return {"status": "Error", "message": f"worker down: {', '.join(down)}", "models": models}
        return {"status": "OK", "models": models}

    async def list_models(self) -> list[str]:
        return [m.model_id for m in self.config.models]

    async def close(self) -> None:
        """Stop every worker (EOF on its stdin, SIGKILL after a few seconds)."""
        self._closed = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        supervisors, self._supervisors = list(self._supervisors.values()), {}
        for supervisor in supervisors:
            try:
                await supervisor.close()
            except Exception:
                log.exception("llama-cpp: model %s: closing its worker failed", supervisor.cfg.model_id)

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

    async def _worker(self, model_id: str) -> tuple[WorkerProcess, ModelConfig]:
        cfg = self._model_config(model_id)
        failure = self._failure()
        if failure is not None:
            raise UpstreamUnavailable(f"{PROVIDER_TYPE} provider {self.provider_id!r}: model loading failed: {failure}")
        supervisor = self._supervisors.get(model_id)
        if supervisor is None or not self.is_ready():
            raise UpstreamUnavailable(
                f"{PROVIDER_TYPE} provider {self.provider_id!r}: model loading; retry in a few seconds",
                headers={"Retry-After": "2"},
            )
        worker = supervisor.worker if supervisor.state == "up" else None
        if worker is None or not worker.alive:
            # Being restarted: wait for it unless its backoff is long, then say when to retry.
            wait = supervisor.next_start_at - time.monotonic()
            worker = None
            if wait < 5:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RESTART_WAIT):
                        worker = await supervisor.wait_up()
            if worker is None:
                if supervisor.error is not None:
                    raise UpstreamUnavailable(
                        f"{PROVIDER_TYPE} provider {self.provider_id!r}: model loading failed: {supervisor.error}"
                    )
                raise UpstreamUnavailable(
                    f"{PROVIDER_TYPE} provider {self.provider_id!r}: model {model_id!r} is being restarted "
                    f"after its worker died with {supervisor.last_exit}; retry in a few seconds",
                    headers={"Retry-After": str(max(2, round(wait)))},
                )
        return worker, cfg

    async def _generator(self, model_id: str) -> tuple[WorkerProcess, ModelConfig]:
        worker, cfg = await self._worker(model_id)
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
        if not self.is_ready() and self._load_task is not None:
            await asyncio.shield(self._load_task)
        await self._worker(model.provider_resource_id)
        dims = self._supervisors[model.provider_resource_id].info["n_embd"]
        return attrs.evolve(model, metadata={**model.metadata, "embedding_dimension": dims})

    # -- inference ---------------------------------------------------------------------------

    async def openai_chat_completion(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        kwargs = chat_kwargs(params, self._model_config(str(params.get("model"))))
        return await self._generate("chat", kwargs, params, "chat.completion.chunk")

    async def openai_completion(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        kwargs = completion_kwargs(params, self._model_config(str(params.get("model"))))
        return await self._generate("completion", kwargs, params, "text_completion")

    async def _generate(
        self, kind: str, kwargs: dict[str, Any], params: dict[str, Any], chunk_object: str
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        tail = _usage_tail(chunk_object) if include_usage(params) else None
        # A job still queued in a worker that died never ran: nothing was generated, so it runs
        # once more on the restarted worker. A job that had started fails with the death.
        for attempt in (1, 2):
            worker, cfg = await self._generator(str(params.get("model")))
            on_error = self._error_mapper(cfg)
            try:
                if kwargs["stream"]:
                    return await worker.stream(kind, kwargs, on_error, tail)
                result, _ = await worker.call(kind, kwargs)
                return result
            except WorkerDied as exc:
                if exc.started or attempt == 2:
                    raise on_error(exc) from None
            except JobFailed as exc:
                raise on_error(exc) from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        model_id = str(params.get("model"))
        worker, cfg = await self._worker(model_id)
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
        dims = int(worker.info["n_embd"])
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
            data, _ = await worker.call("embed", {"input": texts})
        except WorkerDied as exc:
            if exc.started:
                raise self._error_mapper(cfg)(exc) from None
            worker, cfg = await self._worker(model_id)  # never ran: once more on the new worker
            try:
                data, _ = await worker.call("embed", {"input": texts})
            except (WorkerDied, JobFailed) as again:
                raise self._error_mapper(cfg)(again) from None
        except JobFailed as exc:
            raise self._error_mapper(cfg)(exc) from None
        tokens = data["tokens"]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                for i, v in enumerate(data["vectors"])
            ],
            "model": params.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _error_mapper(self, cfg: ModelConfig) -> Callable[[BaseException], BaseException]:
        """What a client sees when a job fails: llama-cpp-python reports bad requests (prompt
        longer than n_ctx, unknown tool) as ValueError (400); a dead worker is 502 naming the
        model, the signal and the fix; anything else stays as it is and becomes a 500 with the
        details logged."""

        def mapped(exc: BaseException) -> BaseException:
            if isinstance(exc, StackdError):
                return exc
            if isinstance(exc, WorkerDied):
                if self._closed:
                    return UpstreamUnavailable(f"{PROVIDER_TYPE} provider {self.provider_id!r} is shutting down")
                return UpstreamBadResponse(
                    f"model {cfg.model_id!r} of {PROVIDER_TYPE} provider {self.provider_id!r}: the llama.cpp "
                    f"worker process died with {exit_name(exc.returncode)} during this request; likely cause "
                    f"and fix: {remedy(exc.returncode)}; the worker is being restarted, retry the request"
                )
            if isinstance(exc, JobFailed):
                if exc.kind == "bad_request":
                    return BadRequest(exc.message, [FieldError(loc, msg) for loc, msg in exc.errors])
                if exc.kind == "value":
                    return BadRequest(f"model {cfg.model_id!r} (n_ctx={cfg.n_ctx}): {exc.message}")
                return RuntimeError(f"model {cfg.model_id!r}: llama.cpp failed: {exc.message}")
            return exc

        return mapped


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _usage_tail(chunk_object: str) -> Callable[[dict[str, Any], Usage], dict[str, Any]]:
    """OpenAI's ``stream_options.include_usage``: one last chunk with no choices and the usage."""

    def tail(last: dict[str, Any], stats: Usage) -> dict[str, Any]:
        return {
            "id": last.get("id"),
            "object": chunk_object,
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [],
            "usage": stats.usage(),
        }

    return tail


# Features a portable build leaves out; a build that has them was compiled for a newer CPU
# than "any x86-64 with AVX2", typically by pip's default -march=native.
_BEYOND_PORTABLE = ("AVX512 = 1", "AVX512_VBMI = 1", "AVX512_VNNI = 1", "AVX512_BF16 = 1", "AMX_INT8 = 1")


def _warn_if_not_portable(system_info: str) -> None:
    found = [flag.split(" ")[0] for flag in _BEYOND_PORTABLE if flag in system_info]
    if found:
        log.warning(
            "llama-cpp: this llama-cpp-python build uses %s: it was compiled for this CPU (-march=native) "
            "and dies on CPUs or VMs without them; for a build that runs on any x86-64 CPU with AVX2 run "
            "`python3 tools/llama_cpp_wheel.py --install --force-rebuild` from a stackd checkout",
            ", ".join(found),
        )
