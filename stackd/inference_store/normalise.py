"""Make an upstream's ``chat.completion`` body fit the store, or say why it cannot.

The client's answer is what the upstream sent; the stored record is that body with the fields
the store keys on put right: an integer ``id`` becomes its string, a missing or empty one a
fresh ``chatcmpl-`` id (the completion is still listed with its messages), a float
``created`` its whole seconds, a missing or unusable one the time it was stored. A fixed
record is a shallow copy, so the client's answer is never changed.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

__all__ = ["storable"]

log = logging.getLogger(__name__)

# Beyond this ``created`` is not a Unix time a database integer column takes (or a date).
_MAX_CREATED = 2**53


def storable(completion: Any, model: str) -> dict[str, Any]:
    """``completion`` as the store can keep it; ``ValueError`` saying why when it cannot."""
    if not isinstance(completion, dict):
        raise ValueError(f"the answer is a {type(completion).__name__}, not a JSON object")
    fixes: dict[str, Any] = {}
    cid = completion.get("id")
    if not isinstance(cid, str) or not cid:
        if isinstance(cid, int) and not isinstance(cid, bool):
            fixes["id"] = str(cid)
        else:
            fixes["id"] = f"chatcmpl-{uuid.uuid4().hex}"
            log.debug("the answer has no usable id (%.40r): stored as %s", cid, fixes["id"])
    created = completion.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created < _MAX_CREATED:
        if isinstance(created, float) and math.isfinite(created) and 0 <= created < _MAX_CREATED:
            fixes["created"] = int(created)
        else:
            fixes["created"] = int(time.time())
    if not isinstance(completion.get("model"), str):
        fixes["model"] = model
    return {**completion, **fixes} if fixes else completion
