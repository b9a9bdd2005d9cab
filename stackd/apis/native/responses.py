"""OpenAI answers -> native bodies, as ``llama-stack-client`` 0.2.x parses them.

Output bodies carry every field with ``null`` where 0.2.12 had ``None``, because 0.2.12's
pydantic serialisation did and some clients read the keys directly.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from stackd.errors import UpstreamBadResponse

__all__ = ["openai_to_chat_response", "openai_to_completion_response", "openai_to_embeddings_response"]

CHAT_STOP = {"stop": "end_of_turn", "length": "out_of_tokens", "tool_calls": "end_of_message"}
# 0.2.12 read text completions' finish reasons differently from chat's: unknown means truncated.
COMPLETION_STOP = {
    "stop": "end_of_turn",
    "eos": "end_of_turn",
    "eos_token": "end_of_turn",
    "eom": "end_of_message",
    "length": "out_of_tokens",
}
# Llama 3 end-of-turn/message tokens that some raw completion servers leave in the text.
EOT, EOM = "<|eot_id|>", "<|eom_id|>"


def _first_choice(resp: Any, what: str) -> Mapping[str, Any]:
    choices = resp.get("choices") if isinstance(resp, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise UpstreamBadResponse(f"the upstream {what} has no choices; expected an OpenAI {what} body")
    return choices[0]


def metrics(usage: Any) -> list[dict[str, Any]] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    total = usage.get("total_tokens") or prompt + completion
    return [
        {"metric": "prompt_tokens", "value": prompt, "unit": None},
        {"metric": "completion_tokens", "value": completion, "unit": None},
        {"metric": "total_tokens", "value": total, "unit": None},
    ]


def chat_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not content:
        return None
    out = []
    for token in content:
        top = token.get("top_logprobs")
        if top:
            out.append({"logprobs_by_token": {t.get("token", ""): t.get("logprob") for t in top}})
        else:
            # Asked without top_k: only the chosen token has a logprob.
            out.append({"logprobs_by_token": {token.get("token", ""): token.get("logprob")}})
    return out


def tool_call(call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
    """A native ToolCall; ``arguments`` stays the raw string when it is not a JSON object."""
    text = arguments or "{}"
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    return {
        "call_id": call_id or f"call_{secrets.token_hex(12)}",
        "tool_name": name or "",
        "arguments": parsed if isinstance(parsed, dict) else arguments,
        "arguments_json": text if isinstance(parsed, dict) else None,
    }


def openai_to_chat_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The native chat-completion body for an OpenAI ``chat.completion`` body."""
    choice = _first_choice(resp, "chat.completion")
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise UpstreamBadResponse("the upstream chat.completion choice has no message")
    content = message.get("content")
    if isinstance(content, list):  # some servers answer in parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    tool_calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        tool_calls.append(tool_call(call.get("id"), function.get("name"), function.get("arguments") or ""))
    return {
        "metrics": metrics(resp.get("usage")),
        "completion_message": {
            "role": "assistant",
            "content": content or "",
            "stop_reason": CHAT_STOP.get(choice.get("finish_reason") or "stop", "end_of_turn"),
            "tool_calls": tool_calls,
        },
        "logprobs": chat_logprobs(choice.get("logprobs")),
    }


def completion_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    if not isinstance(logprobs, Mapping):
        return None
    top = logprobs.get("top_logprobs")
    if top and all(isinstance(t, Mapping) for t in top):
        return [{"logprobs_by_token": dict(t)} for t in top]
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if tokens and values:
        return [{"logprobs_by_token": {t: v}} for t, v in zip(tokens, values, strict=False)]
    return None


def openai_to_completion_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The native completion body for an OpenAI ``text_completion`` body."""
    choice = _first_choice(resp, "text_completion")
    text = choice.get("text") or ""
    if text.endswith(EOT):
        text, stop_reason = text[: -len(EOT)], "end_of_turn"
    elif text.endswith(EOM):
        text, stop_reason = text[: -len(EOM)], "end_of_message"
    else:
        stop_reason = COMPLETION_STOP.get(choice.get("finish_reason") or "", "out_of_tokens")
    return {
        "metrics": metrics(resp.get("usage")),
        "content": text,
        "stop_reason": stop_reason,
        "logprobs": completion_logprobs(choice.get("logprobs")),
    }


def openai_to_embeddings_response(resp: dict[str, Any]) -> dict[str, Any]:
    """``{"embeddings": [[...], ...]}`` in input order."""
    data = resp.get("data") if isinstance(resp, Mapping) else None
    if not isinstance(data, list) or not all(
        isinstance(d, Mapping) and isinstance(d.get("embedding"), list) for d in data
    ):
        raise UpstreamBadResponse("the upstream embeddings answer has no data[].embedding lists")
    ordered = sorted(data, key=lambda d: d.get("index") or 0)
    return {"embeddings": [d["embedding"] for d in ordered]}
