"""stackd provider ``remote::vllm``: inference through any OpenAI-compatible HTTP server."""

from stackd import ProviderSpec
from stackd_provider_vllm.config import VLLMConfig
from stackd_provider_vllm.inference import create

__all__ = ["spec"]

spec = ProviderSpec(
    contract=1,
    api="inference",
    provider_type="remote::vllm",
    config_class=VLLMConfig,
    factory=create,
    description="Any OpenAI-compatible server (vLLM, llama.cpp's server, TGI, ...), reached over HTTP.",
)
