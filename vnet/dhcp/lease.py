"""The in-memory lease record shared by the DHCP core and the lease store. Pure data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Lease states. OFFERED lives in memory only; the others are persisted.
OFFERED = "offered"
BOUND = "bound"
RELEASED = "released"
EXPIRED = "expired"
DECLINED = "declined"

# One persisted lease: (network, ip, mac, client key, hostname, expires, state)
Row = tuple[str, str, str, bytes, str | None, float, str]


@dataclass(slots=True)
class Lease:
    """Who holds (or last held) one address of one network.

    ``client`` is the key a client is known by: its client identifier (option 61) when it sends
    one, else ``b"\\x01"`` + its MAC. ``source`` is the relay (giaddr + option 82) or ``b""``;
    it is not persisted.
    """

    ip: int
    mac: str
    client: bytes
    state: str
    expires: float
    hostname: str | None = None
    source: bytes = b""

    @property
    def address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.ip)

    def holds(self, now: float) -> bool:
        """Whether the address is taken (by this lease) at ``now``."""
        return self.expires > now and self.state in (BOUND, OFFERED, DECLINED)

    def row(self, network: str) -> Row:
        ip = self.ip
        return (
            network,
            f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}",  # str(IPv4Address), faster
            self.mac,
            self.client,
            self.hostname,
            self.expires,
            self.state,
        )
