"""stackd provider ``inline::llama-cpp``: GGUF models run in-process by llama-cpp-python."""

from stackd import ProviderSpec
from stackd_provider_llama_cpp.config import LlamaCppConfig
from stackd_provider_llama_cpp.inference import create

__all__ = ["spec"]

spec = ProviderSpec(
    contract=1,
    api="inference",
    provider_type="inline::llama-cpp",
    config_class=LlamaCppConfig,
    factory=create,
    description="GGUF models in this process through llama-cpp-python (default: Gemma 3 270M from PyPI)",
)
