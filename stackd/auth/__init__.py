"""Authentication (``server.auth``, API.md §4): one module per provider type.

:func:`build_authenticator` turns the config into an object of the
:class:`stackd.admission.Authenticator` shape; the stack opens and closes it.
"""

from __future__ import annotations

from stackd.auth.custom import CustomAuthenticator
from stackd.auth.introspection import IntrospectionAuthenticator
from stackd.auth.oauth2_token import OAuth2TokenAuthenticator
from stackd.config.auth import AuthConfig, CustomAuth

__all__ = ["CustomAuthenticator", "IntrospectionAuthenticator", "OAuth2TokenAuthenticator", "build_authenticator"]


def build_authenticator(
    config: AuthConfig, hash_key: bytes
) -> CustomAuthenticator | OAuth2TokenAuthenticator | IntrospectionAuthenticator:
    """The authenticator ``config`` names, not yet opened. ``hash_key`` keys the hashes of
    tokens that stand as a caller's namespace (kept by the stack, so they survive restarts)."""
    if isinstance(config, CustomAuth):
        return CustomAuthenticator(config.config, hash_key)
    if config.config.introspection is not None:
        return IntrospectionAuthenticator(config.config)
    return OAuth2TokenAuthenticator(config.config)
