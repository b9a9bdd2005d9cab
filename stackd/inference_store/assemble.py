"""Rebuild the ``chat.completion`` body of a streamed answer from its chunks.

A streamed completion is stored as the body the same request without ``stream`` would have
returned, so ``GET /v1/chat/completions/{id}`` reads the same whichever way it was made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["assemble_chat_stream"]

# Delta fields that arrive in pieces. ``reasoning_content`` (vLLM, DeepSeek) and ``reasoning``
# (Ollama, llama.cpp) are not OpenAI's, but the same servers put them in the full body too.
_TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")
# Chunk fields of the body: the first non-null value wins (servers repeat them on every chunk).
_TOP_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")


class _Choice:
    __slots__ = ("extra", "finish_reason", "function_call", "logprobs", "role", "texts", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.texts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.extra: dict[str, Any] = {}

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        for key, value in delta.items():
            if value is None:
                continue
            if key == "role":
                self.role = self.role or value
            elif key in _TEXT_FIELDS:
                self.texts.setdefault(key, []).append(value)
            elif key == "tool_calls":
                for call in value:
                    self._add_tool_call(call)
            elif key == "function_call":
                self.function_call = _merge_function(self.function_call, value)
            else:
                self.extra[key] = value
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if logprobs:
            self.logprobs = self.logprobs or {}
            for key, tokens in logprobs.items():
                if isinstance(tokens, list):
                    self.logprobs.setdefault(key, []).extend(tokens)

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            # Some servers leave out ``index``: a new id opens a call, no id continues the last.
            ids = {c.get("id"): i for i, c in self.tool_calls.items()}
            if call.get("id") and call["id"] not in ids:
                index = len(self.tool_calls)
            elif call.get("id"):
                index = ids[call["id"]]
            else:
                index = max(self.tool_calls, default=0)
        merged = self.tool_calls.setdefault(index, {"id": None, "type": "function", "function": None})
        if call.get("id") and not merged["id"]:
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        if call.get("function") is not None:
            merged["function"] = _merge_function(merged["function"], call["function"])

    def body(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role or "assistant"}
        message["content"] = "".join(self.texts["content"]) if "content" in self.texts else None
        message["refusal"] = "".join(self.texts["refusal"]) if "refusal" in self.texts else None
        for key in ("reasoning_content", "reasoning"):
            if key in self.texts:
                message[key] = "".join(self.texts[key])
        if self.tool_calls:
            calls = []
            for _, call in sorted(self.tool_calls.items()):
                call = dict(call)
                call["function"] = call["function"] or {"name": "", "arguments": ""}
                calls.append(call)
            message["tool_calls"] = calls
        if self.function_call is not None:
            message["function_call"] = self.function_call
        message.update(self.extra)
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }


def _merge_function(merged: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    merged = merged if merged is not None else {"name": "", "arguments": ""}
    # The name comes whole in the first fragment; servers that repeat it must not double it.
    if part.get("name") and not merged["name"]:
        merged["name"] = part["name"]
    if part.get("arguments"):
        merged["arguments"] += part["arguments"]
    return merged


def assemble_chat_stream(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` body equivalent to these ``chat.completion.chunk`` dicts.

    Raises ``ValueError`` when no chunk carries an ``id``: such a stream cannot be stored.
    """
    top: dict[str, Any] = {}
    missing = list(_TOP_FIELDS)  # runs once per streamed token: look only for what is not found yet
    choices: dict[int, _Choice] = {}
    usage: Any = None
    for chunk in chunks:
        if missing:
            for key in [k for k in missing if chunk.get(k) is not None]:
                top[key] = chunk[key]
                missing.remove(key)
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            choices.setdefault(index, _Choice()).add(choice)
        if chunk.get("usage") is not None:
            usage = chunk["usage"]  # the last usage chunk is the total
    if not top.get("id"):
        raise ValueError("no chunk of the stream carries an 'id'; it cannot be assembled")
    body: dict[str, Any] = {
        "id": top["id"],
        "object": "chat.completion",
        "created": top.get("created", 0),
        "model": top.get("model", ""),
        "choices": [choice.body(index) for index, choice in sorted(choices.items())],
    }
    for key in ("system_fingerprint", "service_tier"):
        if key in top:
            body[key] = top[key]
    if usage is not None:
        body["usage"] = usage
    return body
