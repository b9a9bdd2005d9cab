"""Tokens/s and time to first token of the bundled Gemma 3 270M: llama.cpp in this process vs
inline::llama-cpp's worker process.

    python -m bench.llama_cpp                    # both, interleaved, 5 rounds of 128 tokens
    python -m bench.llama_cpp --rounds 9 --tokens 256 --threads 2

"in-process" is bare llama-cpp-python here, streaming on this thread: the lower bound of any
in-process design (the old one ran the same loop on a thread and handed each token to the event
loop). "worker" is the provider as stackd runs it: a stream request through the framed
protocol, tokens read on the event loop. Both generate the same greedy tokens with
end-of-sequence forbidden, so every run makes exactly ``--tokens`` tokens; they alternate
round by round so that drift (heat, other load) hits both alike.

TTFT is from the call to the first content token (prompt evaluation included); tokens/s is
decode speed, (tokens - 1) / (last token - first token). Medians and bests (the least disturbed
run on a shared machine) are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

__all__ = ["main"]

PROMPT = "Once upon a time"


def _in_process(llama: Any, tokens: int, bias: dict[int, float], prompt: str = PROMPT) -> tuple[float, float]:
    started = time.perf_counter()
    stamps = []
    for _chunk in llama.create_completion(prompt, max_tokens=tokens, temperature=0, logit_bias=bias, stream=True):
        stamps.append(time.perf_counter())
    return _figures(started, stamps, tokens)


async def _worker(provider: Any, tokens: int, bias: dict[int, float], prompt: str = PROMPT) -> tuple[float, float]:
    from stackd import CallContext

    params = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
              "logit_bias": {str(k): v for k, v in bias.items()}}
    started = time.perf_counter()
    stamps = []
    stream = await provider.openai_completion(params, CallContext())
    async for chunk in stream:
        if chunk["choices"] and chunk["choices"][0].get("text") is not None and not chunk["choices"][0].get(
            "finish_reason"
        ):
            stamps.append(time.perf_counter())
    return _figures(started, stamps, tokens)


def _figures(started: float, stamps: list[float], tokens: int) -> tuple[float, float]:
    if len(stamps) < tokens - 1:
        raise SystemExit(f"expected about {tokens} tokens, got {len(stamps)}")
    ttft_ms = (stamps[0] - started) * 1000
    tps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return tps, ttft_ms


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp
    from stackd_provider_llama_cpp import spec
    from stackd_provider_llama_cpp.config import ModelConfig
    from stackd_provider_llama_cpp.loading import resolve_gguf

    from stackd.convert import structure

    model = {"model_id": "bench", "n_ctx": args.n_ctx, "n_threads": args.threads, "max_tokens": args.tokens}
    path = resolve_gguf(ModelConfig(**{k: v for k, v in model.items() if v is not None}))
    llama = llama_cpp.Llama(str(path), n_ctx=args.n_ctx, n_threads=args.threads or len(os.sched_getaffinity(0)),
                            n_threads_batch=args.threads or len(os.sched_getaffinity(0)), verbose=False)
    bias = {llama.token_eos(): -100.0}
    for special in llama.tokenize(b"<end_of_turn>", add_bos=False, special=True):
        bias[special] = -100.0
    provider = await spec.factory(structure({"models": [{k: v for k, v in model.items() if v is not None}]},
                                            spec.config_class), {"__provider_id__": "bench"})
    try:
        await provider._load_task
        assert provider.is_ready(), provider.not_ready_reason()
        _in_process(llama, 8, bias)  # warm-up: page in the weights, first-call setup
        await _worker(provider, 8, bias)
        results: dict[str, list[tuple[float, float]]] = {"in-process": [], "worker": []}
        # A long prompt makes TTFT measure prompt processing (compute-bound, where the build's
        # instruction sets show); the default short one makes it measure the per-request overhead.
        # A long prompt starts with the round's number so that llama-cpp-python's prefix reuse
        # cannot skip its evaluation; the short one is the same every time on both sides.
        body = "The quick brown fox jumps. " * (args.prompt_words // 5)
        for i in range(args.rounds):
            prompt = f"{i}. {body}" if args.prompt_words else PROMPT
            # The pause lets the other side's OpenMP threads stop spinning (libgomp spins a while
            # after a parallel region): otherwise each run would share the cores with them.
            if args.only != "worker":
                await asyncio.sleep(args.pause)
                results["in-process"].append(_in_process(llama, args.tokens, bias, prompt))
            if args.only != "in-process":
                await asyncio.sleep(args.pause)
                results["worker"].append(await _worker(provider, args.tokens, bias, prompt))
    finally:
        await provider.close()
        llama.close()
    out: dict[str, Any] = {"tokens": args.tokens, "rounds": args.rounds, "prompt_words": args.prompt_words,
                           "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    for name, runs in results.items():
        if not runs:
            results[name] = results["worker" if name == "in-process" else "in-process"]
            runs = results[name]
        # On a shared machine the best run is the least disturbed one; the median shows the spread.
        out[name] = {"tokens_per_s": statistics.median(r[0] for r in runs),
                     "ttft_ms": statistics.median(r[1] for r in runs),
                     "best_tokens_per_s": max(r[0] for r in runs),
                     "best_ttft_ms": min(r[1] for r in runs),
                     "runs": [[round(a, 2), round(b, 2)] for a, b in runs]}
    inp, wrk = out["in-process"], out["worker"]
    out["worker_vs_in_process"] = {
        "tokens_per_s_pct": round(100 * (wrk["tokens_per_s"] / inp["tokens_per_s"] - 1), 2),
        "ttft_ms_delta": round(wrk["ttft_ms"] - inp["ttft_ms"], 2),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llama.cpp in-process vs inline::llama-cpp's worker process")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest before each run")
    parser.add_argument("--prompt-words", type=int, default=0, help="a prompt of about this many words")
    parser.add_argument("--only", choices=["in-process", "worker"], help="measure one side only")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    out = asyncio.run(_run(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    for name in ("in-process", "worker"):
        o = out[name]
        print(f"{name:>10}: median {o['tokens_per_s']:.1f} tokens/s, TTFT {o['ttft_ms']:.1f} ms; "
              f"best {o['best_tokens_per_s']:.1f} tokens/s, TTFT {o['best_ttft_ms']:.1f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
