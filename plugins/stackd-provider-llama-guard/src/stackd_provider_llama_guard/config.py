"""Configuration of the ``inline::llama-guard`` provider."""

from __future__ import annotations

from typing import Annotated

import attrs

from stackd import Check
from stackd_provider_llama_guard.prompt import CATEGORIES

__all__ = ["LlamaGuardConfig"]

Category = Annotated[str, Check(lambda code: code in CATEGORIES, "a Llama Guard 3 category code, S1 to S14")]


@attrs.frozen
class LlamaGuardConfig:
    """``config:`` of an ``inline::llama-guard`` provider.

    - ``excluded_categories``: category codes (``S1`` ... ``S14``) left out of the prompt; a
      verdict that names only excluded categories counts as safe.
    - ``model``: a model id this provider accepts as a shield's model besides the Llama Guard 3
      ids (``Llama-Guard-3-1B``, ``-8B``, ``-11B-Vision``, with or without ``meta-llama/``), for a
      guard model served under another name.
    - ``max_tokens``: the longest verdict asked of the model (``unsafe\\nS1,S2,...`` fits in 20).
    """

    excluded_categories: list[Category] = attrs.field(factory=list)
    model: str | None = None
    max_tokens: int = 20
