"""A provider that does not keep the contract (a misspelt method, a sync health check), so tests
can check that the core refuses it when it is built, naming the distribution and the methods."""

from collections.abc import Mapping
from typing import Any

from stackd import ProviderSpec
from stackd_provider_echo.config import EchoConfig
from stackd_provider_echo.inference import EchoInference


class MisspeltInference(EchoInference):
    openai_chat_completion = None  # type: ignore[assignment]

    async def openai_chat_completions(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {}

    def health(self) -> dict[str, Any]:  # type: ignore[override]
        return {"status": "OK"}


async def create(config: EchoConfig, deps: Mapping[str, Any]) -> MisspeltInference:
    return MisspeltInference(config, str(deps.get("__provider_id__", "misspelt")))


spec = ProviderSpec(
    contract=1,
    api="inference",
    provider_type="inline::misspelt",
    config_class=EchoConfig,
    factory=create,
    description="Breaks the provider contract on purpose.",
)
