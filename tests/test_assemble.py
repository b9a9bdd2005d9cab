"""Stream assembly: the token fast path of ChatStreamAssembler.add gives the body the general walk gives."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stackd.inference_store.assemble import ChatStreamAssembler

_text = st.text(max_size=6)
_delta = st.one_of(
    st.fixed_dictionaries({"content": _text}),  # a token: the fast path
    st.fixed_dictionaries({"content": st.none()}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": _text}),
    st.fixed_dictionaries({"reasoning_content": _text}),
    st.fixed_dictionaries({"tool_calls": st.lists(st.fixed_dictionaries(
        {"index": st.integers(0, 1), "function": st.fixed_dictionaries({"arguments": _text})}), max_size=2)}),
    st.just({}),
)
_choice = st.fixed_dictionaries(
    {"index": st.integers(0, 1), "delta": _delta},
    optional={"finish_reason": st.sampled_from([None, "stop", "length"]),
              "logprobs": st.sampled_from([None, {"content": [{"token": "a", "logprob": -0.1}]}])},
)
_chunk = st.fixed_dictionaries(
    {"id": st.just("chatcmpl-1"), "object": st.just("chat.completion.chunk"), "created": st.just(1),
     "model": st.just("m"), "choices": st.lists(_choice, max_size=2)},
    optional={"usage": st.just({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
              "system_fingerprint": st.just("fp")},
)


def _assembled(chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    assembler = ChatStreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.body(), assembler.kept


def _general_only(chunk: dict[str, Any]) -> dict[str, Any]:
    """The same chunk, but no delta is a lone token any more (a null refusal is skipped by the walk)."""
    chunk = copy.deepcopy(chunk)
    for choice in chunk["choices"]:
        choice["delta"]["refusal"] = None
    return chunk


@given(st.lists(_chunk, max_size=12))
def test_the_token_fast_path_assembles_what_the_general_walk_assembles(chunks: list[dict[str, Any]]) -> None:
    assert _assembled(chunks) == _assembled([_general_only(c) for c in chunks])
