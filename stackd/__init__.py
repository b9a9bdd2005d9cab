"""stackd: a fast, correct Llama-Stack-style API server. This module is the public API for plugins."""

from stackd.apis.context import CallContext
from stackd.apis.inference import InferenceProvider, InferenceRouting, OpenAIResult
from stackd.apis.models import Model, Shield
from stackd.apis.safety import SafetyProvider, SafetyRouting
from stackd.caller import ANONYMOUS, Caller
from stackd.convert import Check, Hook, HttpUrl, Seconds, Secret, Tagged
from stackd.providers.spec import PLUGIN_CONTRACT, ProviderSpec

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
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
