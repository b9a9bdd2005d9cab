"""The ``inline::echo`` provider: answers every request with the text it was given."""

from stackd import ProviderSpec
from stackd_provider_echo.config import EchoConfig
from stackd_provider_echo.inference import create

spec = ProviderSpec(
    contract=1,
    api="inference",
    provider_type="inline::echo",
    config_class=EchoConfig,
    factory=create,
    description="Echoes the last user message back, one word per stream chunk.",
)
