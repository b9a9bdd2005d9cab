"""stackd: a fast, correct Llama-Stack-style API server. This module is the public API for plugins.

Names are imported on first use, so ``import stackd.client`` (or anything else that only needs
``stackd.__version__``) does not load the plugin machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stackd.apis.context import CallContext
    from stackd.apis.inference import InferenceProvider, InferenceRouting, OpenAIResult
    from stackd.apis.models import Model, Shield
    from stackd.apis.safety import SafetyProvider, SafetyRouting
    from stackd.caller import ANONYMOUS, Caller
    from stackd.convert import Check, Hook, HttpUrl, Seconds, Secret, Tagged
    from stackd.providers.spec import PLUGIN_CONTRACT, ProviderSpec

__version__ = "0.1.0"
# The distribution (what ``pip install`` names) differs from the import package and the command:
# the PyPI name ``stackd`` belongs to an unrelated project, and a plugin requiring ``stackd`` would
# pull that in. Plugins declare ``stackd-server>=X,<Y``; the plugin loader checks that requirement.
DISTRIBUTION = "stackd-server"

__all__ = [
    "ANONYMOUS",
    "DISTRIBUTION",
    "PLUGIN_CONTRACT",
    "CallContext",
    "Caller",
    "Check",
    "Hook",
    "HttpUrl",
    "InferenceProvider",
    "InferenceRouting",
    "Model",
    "OpenAIResult",
    "ProviderSpec",
    "SafetyProvider",
    "SafetyRouting",
    "Seconds",
    "Secret",
    "Shield",
    "Tagged",
    "__version__",
]

_HOMES = {
    "CallContext": "stackd.apis.context",
    "InferenceProvider": "stackd.apis.inference",
    "InferenceRouting": "stackd.apis.inference",
    "OpenAIResult": "stackd.apis.inference",
    "Model": "stackd.apis.models",
    "Shield": "stackd.apis.models",
    "SafetyProvider": "stackd.apis.safety",
    "SafetyRouting": "stackd.apis.safety",
    "ANONYMOUS": "stackd.caller",
    "Caller": "stackd.caller",
    "Check": "stackd.convert",
    "Hook": "stackd.convert",
    "HttpUrl": "stackd.convert",
    "Seconds": "stackd.convert",
    "Secret": "stackd.convert",
    "Tagged": "stackd.convert",
    "ProviderSpec": "stackd.providers.spec",
    "PLUGIN_CONTRACT": "stackd.providers.spec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'stackd' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once found, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
