"""The service factories the daemon starts for each network, in start order.

Each entry is (service name, ``create(network, ctx) -> Service | None``) (None: the network does not
want that service). To add a service: one import and one entry. Keep this module trivial.
"""

from __future__ import annotations

from collections.abc import Callable

from vnet.model import Network
from vnet.serve import Service, ServiceContext
from vnet.serve.dhcp import create as create_dhcp
from vnet.serve.dns import create as create_dns
from vnet.serve.filter import create as create_filter
from vnet.serve.tftp import create as create_tftp

Factory = Callable[[Network, ServiceContext], Service | None]

FACTORIES: tuple[tuple[str, Factory], ...] = (
    ("filter", create_filter),  # first: subscribed before DHCP publishes its first lease event
    ("dhcp", create_dhcp),
    ("dns", create_dns),
    ("tftp", create_tftp),
)
