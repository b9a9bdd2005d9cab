"""The Llama Guard 3 prompt, and the parsing of its verdict.

The prompt is the one Meta publishes with the model (and Llama Stack sends): the unsafe content
categories, the conversation as ``User:`` / ``Agent:`` turns, and the role whose last message is
to be judged.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from stackd.apis.safety import message_text

__all__ = ["CATEGORIES", "GUARD_MODELS", "build_prompt", "is_guard_model", "parse_verdict"]

CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

GUARD_MODELS = frozenset(
    name for base in ("Llama-Guard-3-1B", "Llama-Guard-3-8B", "Llama-Guard-3-11B-Vision")
    for name in (base, f"meta-llama/{base}")
)


def is_guard_model(model_id: str) -> bool:
    return model_id in GUARD_MODELS



def build_prompt(messages: Sequence[dict[str, Any]], excluded: Collection[str]) -> str:
    """The prompt for the user and assistant turns of ``messages``; system and tool messages are
    not part of the conversation Llama Guard judges."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns:
        raise ValueError("no user or assistant message to check")
    agent_type = "Agent" if turns[-1]["role"] == "assistant" else "User"
    categories = "\n".join(f"{code}: {name}." for code, name in CATEGORIES.items() if code not in excluded)
    conversation = "\n\n".join(
        f"{'Agent' if m['role'] == 'assistant' else 'User'}: {message_text(m.get('content'))}" for m in turns
    )
    return (
        f"Task: Check if there is unsafe content in '{agent_type}' messages in conversations according our "
        "safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {agent_type} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def parse_verdict(text: str) -> list[str] | None:
    """None for ``safe``; the category codes for ``unsafe\\nS1,S3``. Anything else raises
    ValueError saying what came back."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines == ["safe"]:
        return None
    if lines and lines[0] == "unsafe" and len(lines) <= 2:
        codes = [c.strip() for c in lines[1].split(",")] if len(lines) == 2 else []
        unknown = [c for c in codes if c not in CATEGORIES]
        if codes and not unknown:
            return codes
    raise ValueError(f"expected 'safe' or 'unsafe' and a line of categories S1..S14, got {text[:200]!r}")
