"""A provider written for a plugin contract this stackd does not implement (2), so tests can check
that the core refuses it at load, naming both contracts and the distribution."""

from stackd import ProviderSpec
from stackd_provider_echo import create
from stackd_provider_echo.config import EchoConfig

spec = ProviderSpec(
    contract=2,
    api="inference",
    provider_type="inline::future",
    config_class=EchoConfig,
    factory=create,
    description="Written for plugin contract 2.",
)
