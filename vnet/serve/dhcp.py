"""DHCPv4 transport (placeholder; the real transport lands next)."""

from __future__ import annotations

from vnet.model import Network
from vnet.serve import Service, ServiceContext


def create(network: Network, ctx: ServiceContext) -> Service | None:
    return None
