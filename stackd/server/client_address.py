"""The client's address: the socket peer, or what trusted proxies say it is.

``X-Forwarded-For`` and ``Forwarded`` are anyone's to write, so they are read only when the
peer is one of ``server.trusted_proxies``; then the hops are walked from the right (the
nearest) and the first address that is not a trusted proxy is the client. A server with no
trusted proxies pays nothing here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import attrs

__all__ = ["ClientAddresses"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port, as Forwarded writes it
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, _, val = pair.strip().partition("=")
            if key.strip().lower() == "for":
                hops.append(val)
    return hops


@attrs.frozen
class ClientAddresses:
    trusted: tuple[_Network, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[str]) -> ClientAddresses:
        return cls(tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks))

    def _is_trusted(self, address: _Address) -> bool:
        return any(address.version == net.version and address in net for net in self.trusted)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        if not self.trusted or peer is None:
            return peer
        peer_address = _address(peer)
        if peer_address is None or not self._is_trusted(peer_address):
            return peer
        getall = getattr(headers, "getall", None)
        forwarded = getall("Forwarded", []) if getall else [headers.get("Forwarded", "")]
        if any(forwarded):
            hops = _forwarded_for(",".join(forwarded))
        else:
            xff = getall("X-Forwarded-For", []) if getall else [headers.get("X-Forwarded-For", "")]
            hops = ",".join(xff).split(",") if any(xff) else []
        nearest = peer_address
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # a hop no trusted proxy would write: believe nothing before it
            if not self._is_trusted(address):
                return str(address)
            nearest = address
        return str(nearest)
