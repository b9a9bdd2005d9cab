"""Rebuild the ``chat.completion`` body of a streamed answer from its chunks.

A streamed completion is stored as the body the same request without ``stream`` would have
returned, so ``GET /v1/chat/completions/{id}`` reads the same whichever way it was made.

:class:`ChatStreamAssembler` folds chunks in as they pass, so a stream is never kept whole:
only the assembled message grows, and it is weighed against a budget
(``server.max_stored_completion_bytes``) on the way. Over the budget it lets go of what it
kept and the completion is not stored (a truncated record would read as the whole answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ChatStreamAssembler", "assemble_chat_stream", "weight"]

# Delta fields that arrive in pieces. ``reasoning_content`` (vLLM, DeepSeek) and ``reasoning``
# (Ollama, llama.cpp) are not OpenAI's, but the same servers put them in the full body too.
_TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")
_TEXT_KEYS = frozenset(_TEXT_FIELDS)
# Chunk fields of the body: the first non-null value wins (servers repeat them on every chunk).
_TOP_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# What a kept piece costs beyond its characters (the str object, its list slot): a stream of
# one-character deltas must weigh what it takes in memory, not what it prints.
_PIECE = 64


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

    def add(self, choice: dict[str, Any]) -> int:
        """Fold one chunk's choice in; returns roughly how many bytes that kept."""
        kept = 0
        delta = choice.get("delta")
        if delta:
            texts = self.texts
            for key, value in delta.items():
                if value is None:
                    continue
                if key in _TEXT_KEYS:  # the one branch a token takes: checked first
                    pieces = texts.get(key)
                    if pieces is None:
                        texts[key] = [value]
                    else:
                        pieces.append(value)
                    kept += _PIECE + len(value)
                elif key == "role":
                    self.role = self.role or value
                elif key == "tool_calls":
                    for call in value:
                        kept += self._add_tool_call(call)
                elif key == "function_call":
                    self.function_call = _merge_function(self.function_call, value)
                    kept += _PIECE + len(value.get("arguments") or "")
                else:
                    self.extra[key] = value
                    kept += weight(value)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self.finish_reason = finish_reason
        logprobs = choice.get("logprobs")
        if logprobs:
            self.logprobs = self.logprobs or {}
            for key, tokens in logprobs.items():
                if isinstance(tokens, list):
                    self.logprobs.setdefault(key, []).extend(tokens)
                    kept += weight(tokens)
        return kept

    def _add_tool_call(self, call: dict[str, Any]) -> int:
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
            return _PIECE + len(call["function"].get("arguments") or "")
        return _PIECE

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
                call["function"] = _joined(call["function"])
                calls.append(call)
            message["tool_calls"] = calls
        if self.function_call is not None:
            message["function_call"] = _joined(self.function_call)
        message.update(self.extra)
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }


def _merge_function(merged: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    # Arguments are kept as pieces and joined once: `+=` on each fragment copies the whole
    # string every time, which a long tool call in small fragments turns quadratic.
    merged = merged if merged is not None else {"name": "", "arguments": []}
    # The name comes whole in the first fragment; servers that repeat it must not double it.
    if part.get("name") and not merged["name"]:
        merged["name"] = part["name"]
    if part.get("arguments"):
        merged["arguments"].append(part["arguments"])
    return merged


def _joined(function: dict[str, Any] | None) -> dict[str, Any]:
    if function is None:
        return {"name": "", "arguments": ""}
    return {**function, "arguments": "".join(function["arguments"])}


def weight(value: Any) -> int:
    """Roughly how many bytes ``value`` (parsed JSON) takes once kept: characters plus a fixed
    cost per piece. Used on the store's path only, where it is cheap next to the write."""
    if isinstance(value, str):
        return _PIECE + len(value)
    if isinstance(value, dict):
        return _PIECE + sum(weight(v) + _PIECE + len(k) for k, v in value.items())
    if isinstance(value, list):
        return _PIECE + sum(weight(v) for v in value)
    return _PIECE


class ChatStreamAssembler:
    """Folds ``chat.completion.chunk`` dicts into one ``chat.completion`` body as they pass.

    With a ``budget``, :meth:`add` returns False once what is kept passes it; the assembler
    then drops everything it kept and ignores further chunks (:attr:`over` says so).
    """

    __slots__ = ("_choices", "_missing", "_top", "_usage", "budget", "kept", "over")

    def __init__(self, budget: int | None = None) -> None:
        self._top: dict[str, Any] = {}
        # Looked up once per token: only what is not found yet, and only when the chunk has one.
        self._missing = set(_TOP_FIELDS)
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self.budget = budget
        self.kept = 0
        self.over = False

    def add(self, chunk: dict[str, Any]) -> bool:
        if self.over:
            return False
        missing = self._missing
        if missing and not missing.isdisjoint(chunk):
            for key in [k for k in missing if chunk.get(k) is not None]:
                self._top[key] = chunk[key]
                missing.discard(key)
        choices = self._choices
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            kept = choices.get(index)
            if kept is None:
                kept = choices[index] = _Choice()
            # A token: one piece of content and nothing else (what nearly every chunk is),
            # appended here without the general walk of the choice.
            delta = choice.get("delta")
            if (delta.__class__ is dict and len(delta) == 1 and choice.get("finish_reason") is None
                    and not choice.get("logprobs")):
                content = delta.get("content")
                if content.__class__ is str:
                    pieces = kept.texts.get("content")
                    if pieces is None:
                        kept.texts["content"] = [content]
                    else:
                        pieces.append(content)
                    self.kept += _PIECE + len(content)
                    continue
            self.kept += kept.add(choice)
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage  # the last usage chunk is the total
        if self.budget is not None and self.kept > self.budget:
            self.over = True
            self._choices = {}
            self._usage = None
            return False
        return True

    @property
    def id(self) -> Any:
        return self._top.get("id")

    def body(self) -> dict[str, Any]:
        """The ``chat.completion`` body; its ``id`` is None when no chunk carried one."""
        top = self._top
        body: dict[str, Any] = {
            "id": top.get("id"),
            "object": "chat.completion",
            "created": top.get("created", 0),
            "model": top.get("model", ""),
            "choices": [choice.body(index) for index, choice in sorted(self._choices.items())],
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in top:
                body[key] = top[key]
        if self._usage is not None:
            body["usage"] = self._usage
        return body


def assemble_chat_stream(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` body equivalent to these ``chat.completion.chunk`` dicts.

    Raises ``ValueError`` when no chunk carries an ``id``: such a stream cannot be stored.
    """
    assembler = ChatStreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    if not assembler.id:
        raise ValueError("no chunk of the stream carries an 'id'; it cannot be assembled")
    return assembler.body()
