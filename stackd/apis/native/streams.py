"""Native streams: OpenAI chunks in, the events ``llama-stack-client`` 0.2.x parses out.

The translators run once per streamed token, so they work on the chunk dicts as they come:
no structuring, no copies, one small dict per event. Native streams never end with
``[DONE]``: the 0.2.x client fails on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from stackd.apis.inference import close_stream
from stackd.apis.native.responses import (
    CHAT_STOP,
    COMPLETION_STOP,
    EOM,
    EOT,
    chat_logprobs,
    completion_logprobs,
    metrics,
    tool_call,
)

__all__ = ["ChatStreamTranslator", "CompletionStreamTranslator", "translated"]


class Translator(Protocol):
    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...


async def translated(chunks: AsyncIterator[dict[str, Any]], translator: Translator) -> AsyncIterator[dict[str, Any]]:
    """The native events of a provider's OpenAI stream; the provider's stream is closed however it ends."""
    try:
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield event
        for event in translator.finish():
            yield event
    finally:
        await close_stream(chunks)


def _event(
    event_type: str,
    delta: dict[str, Any],
    stop_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    metrics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "event": {"event_type": event_type, "delta": delta, "logprobs": logprobs, "stop_reason": stop_reason},
        "metrics": metrics,
    }


class ChatStreamTranslator:
    """OpenAI ``chat.completion.chunk`` dicts in, native stream chunk bodies out.

    As in 0.2.12: a ``start`` event with an empty text delta first; a ``progress`` text event
    per content delta; tool-call fragments gathered by index and emitted once complete (at
    ``finish_reason``) as ``succeeded`` with the parsed call, or ``failed`` with
    ``"name(arguments)"`` when the arguments are not a JSON object; then a ``complete`` event
    with the stop reason and, from the usage chunk, the token metrics.
    """

    __slots__ = ("_calls", "_started", "_stop_reason", "_usage", "_violation")

    def __init__(self) -> None:
        self._started = False
        self._stop_reason: str | None = None
        self._usage: Any = None
        self._violation: Any = None
        # index -> [id, name, argument fragments]
        self._calls: dict[int, list[Any]] = {}

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(_event("start", {"type": "text", "text": ""}))
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            logprobs = choice.get("logprobs")
            out.append(
                _event(
                    "progress",
                    {"type": "text", "text": content},
                    logprobs=chat_logprobs(logprobs) if logprobs else None,
                )
            )
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            self._gather(tool_calls)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._stop_reason = CHAT_STOP.get(finish_reason, "end_of_turn")
            # A guardrail's last chunk carries its violation (stackd.guardrails): looked up once
            # per stream, at its end, so unguarded streams pay nothing for it.
            self._violation = chunk.get("violation")
            self._flush_calls(out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The events after the upstream's last chunk: pending tool calls, then ``complete``."""
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(_event("start", {"type": "text", "text": ""}))
        self._flush_calls(out)
        # 0.2.12 (vLLM) called a stream that ended without a finish reason end_of_message.
        out.append(
            _event(
                "complete",
                {"type": "text", "text": ""},
                stop_reason=self._stop_reason or "end_of_message",
                metrics=metrics(self._usage),
            )
        )
        if self._violation is not None:
            out[-1]["violation"] = self._violation
        return out

    def _gather(self, tool_calls: list[dict[str, Any]]) -> None:
        for call in tool_calls:
            index = call.get("index") or 0
            buffer = self._calls.get(index)
            if buffer is None:
                buffer = self._calls[index] = [None, "", []]
            if call.get("id") and not buffer[0]:
                buffer[0] = call["id"]
            function = call.get("function")
            if function:
                name = function.get("name")
                # OpenAI sends the name once; some servers repeat it whole in every fragment.
                if name and name != buffer[1]:
                    buffer[1] += name
                arguments = function.get("arguments")
                if arguments:
                    buffer[2].append(arguments)

    def _flush_calls(self, out: list[dict[str, Any]]) -> None:
        if not self._calls:
            return
        for index in sorted(self._calls):
            call_id, name, fragments = self._calls[index]
            arguments = "".join(fragments)
            call = tool_call(call_id, name, arguments)
            if call["arguments_json"] is not None and name:
                delta = {"type": "tool_call", "tool_call": call, "parse_status": "succeeded"}
            else:
                delta = {"type": "tool_call", "tool_call": f"{name}({arguments})", "parse_status": "failed"}
            out.append(_event("progress", delta, stop_reason=self._stop_reason))
        self._calls.clear()


class CompletionStreamTranslator:
    """OpenAI ``text_completion`` stream chunks in, native completion stream chunks out:
    ``{delta, stop_reason: null, logprobs, metrics: null}`` per piece of text, then one last
    ``{delta: "", stop_reason, logprobs: null, metrics}``."""

    __slots__ = ("_stop_reason", "_usage")

    def __init__(self) -> None:
        self._stop_reason: str | None = None
        self._usage: Any = None

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return []
        choice = choices[0]
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._stop_reason = COMPLETION_STOP.get(finish_reason, "out_of_tokens")
        text = choice.get("text") or ""
        if text in (EOT, EOM):
            self._stop_reason = "end_of_turn" if text == EOT else "end_of_message"
            return []
        logprobs = choice.get("logprobs")
        converted = completion_logprobs(logprobs) if logprobs else None
        if not text and converted is None:
            return []
        return [{"delta": text, "stop_reason": None, "logprobs": converted, "metrics": None}]

    def finish(self) -> list[dict[str, Any]]:
        return [
            {
                "delta": "",
                "stop_reason": self._stop_reason,
                "logprobs": None,
                "metrics": metrics(self._usage),
            }
        ]
