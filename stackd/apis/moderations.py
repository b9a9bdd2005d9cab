"""``POST /v1/moderations`` (OpenAI's shape) on top of shields.

``model`` names a shield, or a model that a shield uses (``meta-llama/Llama-Guard-3-1B`` serves
both ways); without it, ``server.default_moderation_shield``. Each input is run through the shield
as one user message; a violation (level ``warn`` or ``error``) flags it, and its categories are
mapped onto OpenAI's by :data:`LLAMA_GUARD_TO_OPENAI` (docs/safety.md has the table). Shields
give no scores: a flagged category scores 1.0, every other 0.0.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from stackd.apis.context import CallContext
from stackd.apis.safety import SafetyRouting, flagged_violation
from stackd.errors import BadRequest, FieldError

__all__ = ["LLAMA_GUARD_TO_OPENAI", "OPENAI_CATEGORIES", "moderate", "result_of"]

OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
# Llama Guard 3 categories that OpenAI's moderation has no name for keep their own (as Llama
# Stack answers), so a client can still tell an election answer from a privacy leak.
EXTRA_CATEGORIES = (
    "defamation", "specialized_advice", "privacy", "intellectual_property", "elections", "code_interpreter_abuse",
)

LLAMA_GUARD_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),       # Violent Crimes
    "S2": ("illicit",),                          # Non-Violent Crimes
    "S3": ("sexual", "illicit/violent"),         # Sex Crimes
    "S4": ("sexual/minors",),                    # Child Exploitation
    "S5": ("defamation",),                       # Defamation
    "S6": ("specialized_advice",),               # Specialized Advice
    "S7": ("privacy",),                          # Privacy
    "S8": ("intellectual_property",),            # Intellectual Property
    "S9": ("illicit/violent", "violence"),       # Indiscriminate Weapons
    "S10": ("hate",),                            # Hate
    "S11": ("self-harm",),                       # Self-Harm
    "S12": ("sexual",),                          # Sexual Content
    "S13": ("elections",),                       # Elections
    "S14": ("code_interpreter_abuse",),          # Code Interpreter Abuse
}


def _inputs(body: dict[str, Any], max_inputs: int) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("input is required: a string or a non-empty list of strings",
                         [FieldError("$.input", "expected a string or a non-empty list")])
    if len(value) > max_inputs:
        raise BadRequest(f"input holds {len(value)} items; at most {max_inputs} per request "
                         "(server.max_moderation_inputs)", [FieldError("$.input", f"at most {max_inputs} items")])
    texts: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            raise BadRequest("every input item must be a string or {type: text, text}; shields judge text only",
                             [FieldError(f"$.input[{i}]", "expected a string or a text item")])
    return texts


def result_of(answer: dict[str, Any]) -> dict[str, Any]:
    """One ``results[]`` item from a run-shield answer."""
    violation = flagged_violation(answer)
    names: set[str] = set()
    if violation is not None:
        metadata = violation.get("metadata") if isinstance(violation.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        codes = metadata.get("violation_type")
        if isinstance(codes, str):
            for code in codes.split(","):
                names.update(LLAMA_GUARD_TO_OPENAI.get(code.strip(), ()))
        # A provider that knows OpenAI's names (remote::bedrock) may give them itself.
        given = metadata.get("openai_categories")
        if isinstance(given, list):
            names.update(n for n in given if isinstance(n, str) and n in OPENAI_CATEGORIES + EXTRA_CATEGORIES)
    every = OPENAI_CATEGORIES + EXTRA_CATEGORIES
    result: dict[str, Any] = {
        "flagged": violation is not None,
        "categories": {name: name in names for name in every},
        "category_scores": {name: 1.0 if name in names else 0.0 for name in every},
    }
    if violation is not None:
        result["user_message"] = violation.get("user_message")
        result["metadata"] = violation.get("metadata") or {}
    return result


async def moderate(
    safety: SafetyRouting, body: dict[str, Any], ctx: CallContext, *, default_shield: str | None, max_inputs: int
) -> dict[str, Any]:
    model = body.get("model")
    if model is None:
        if default_shield is None:
            raise BadRequest(
                "model is required: name a shield (or the model a shield uses), or set "
                "server.default_moderation_shield in the run config so requests may omit it",
                [FieldError("$.model", "required field missing")],
            )
        model = default_shield
    elif not isinstance(model, str) or not model:
        raise BadRequest("model must be a string: a shield id or the model a shield uses",
                         [FieldError("$.model", "expected a string")])
    texts = _inputs(body, max_inputs)
    shield_id = await safety.shield_for(model, ctx)
    answers = await asyncio.gather(*(
        safety.run_shield(shield_id, [{"role": "user", "content": text}], {}, ctx) for text in texts
    ))
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": [result_of(a) for a in answers]}
