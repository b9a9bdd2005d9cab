"""stackd: a fast, correct Llama-Stack-style API server. This module is the public API for plugins."""

from stackd.apis.context import CallContext
from stackd.apis.inference import InferenceProvider, OpenAIResult
from stackd.apis.models import Model, Shield
from stackd.caller import ANONYMOUS, Caller
from stackd.convert import HttpUrl, Seconds, Secret
from stackd.providers.spec import ProviderSpec

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "CallContext",
    "Caller",
    "HttpUrl",
    "InferenceProvider",
    "Model",
    "OpenAIResult",
    "ProviderSpec",
    "Seconds",
    "Secret",
    "Shield",
    "__version__",
]
