"""Chat templates: how a list of messages becomes one prompt.

Gemma 3 270M as packaged here is a base model and its GGUF carries no chat template, so
llama-cpp-python would fall back to Llama 2's ``[INST]`` format, which this model has never
seen. The plain-text template below is what a base model continues best: a transcript.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from llama_cpp import Llama, llama_chat_format

__all__ = ["PLAIN", "STOP", "chat_handler_for", "format_plain", "message_text"]

PLAIN = "plain"
_ROLE_LABEL = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}
# The model goes on to write the user's next turn unless stopped; these end its turn.
STOP = ["\nUser:", "\nSystem:", "\nTool:"]


def message_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string or a list of parts (text parts kept)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def format_plain(messages: list[dict[str, Any]], **_: Any) -> llama_chat_format.ChatFormatterResponse:
    """``System: ...`` / ``User: ...`` / ``Assistant: ...`` lines, one blank line between turns,
    ending with ``Assistant:`` for the model to continue."""
    turns = [
        f"{_ROLE_LABEL.get(str(m.get('role')), 'User')}: {message_text(m.get('content')).strip()}"
        for m in messages
    ]
    turns.append("Assistant:")
    return llama_chat_format.ChatFormatterResponse(prompt="\n\n".join(turns), stop=list(STOP))


def chat_handler_for(
    template: str | None, llama: Llama
) -> llama_chat_format.LlamaChatCompletionHandler | None:
    """The handler for a model's ``chat_template`` setting, or None to keep llama-cpp-python's own
    choice (the GGUF's embedded template).

    ``None`` means: the GGUF's template if it has one, else :data:`PLAIN`. A value containing
    ``{{`` or ``{%`` is a Jinja template; any other value names a format (``plain``, or one of
    llama-cpp-python's: ``chatml``, ``gemma``, ``llama-3``, ...).
    """
    if template is None:
        if "tokenizer.chat_template" in llama.metadata:
            return None
        template = PLAIN
    if template == PLAIN:
        formatter = cast(llama_chat_format.ChatFormatter, format_plain)
        return _plain_handler(llama_chat_format.chat_formatter_to_chat_completion_handler(formatter))
    if "{{" in template or "{%" in template:
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        ).to_chat_handler()
    registry = llama_chat_format.LlamaChatCompletionHandlerRegistry()  # type: ignore[no-untyped-call]
    known = sorted(registry._chat_handlers)
    if template not in known:
        raise ValueError(
            f"unknown chat format {template!r}; use {PLAIN!r}, a Jinja template, "
            f"or one of: {', '.join(known)}"
        )
    return registry.get_chat_completion_handler_by_name(template)


def _plain_handler(inner: Callable[..., Any]) -> llama_chat_format.LlamaChatCompletionHandler:
    """The prompt ends in ``Assistant:`` (a trailing space would tokenize badly), so the
    reply starts with a space: drop leading whitespace from the reply."""

    def handler(**kwargs: Any) -> Any:
        result = inner(**kwargs)
        if not kwargs.get("stream"):
            message = result["choices"][0]["message"]
            if isinstance(message.get("content"), str):
                message["content"] = message["content"].strip()
            return result
        return _lstrip_stream(result)

    return cast(llama_chat_format.LlamaChatCompletionHandler, handler)


def _lstrip_stream(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    started = False
    try:
        for chunk in chunks:
            if not started:
                for choice in chunk.get("choices", ()):
                    delta = choice.get("delta") or {}
                    if isinstance(delta.get("content"), str):
                        delta["content"] = delta["content"].lstrip()
                        started = bool(delta["content"])
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
