"""Predictable names and marks for the links vnet creates. Pure.

Rules (documented in docs/networks.md):
- a network's bridge defaults to ``vn-<network>`` (when that fits in 15 bytes);
- a guest port is named by its ``ifname:`` key, else ``<network>-<guest>`` when that fits in
  15 bytes and uses only letters, digits, '-', '_' and '.', else ``vn`` + 10 hex digits of
  SHA-1("<network>/<guest>");
- every link vnet creates carries the ifalias ``vnet:<network>:<role>[:<guest>]`` and the link
  group ``link_group(network)``; that mark is how vnet knows what it owns.
"""

from __future__ import annotations

import hashlib
import re
import zlib

from vnet.model import IFNAMSIZ

ALIAS_PREFIX = "vnet:"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_bridge_name(network: str) -> str:
    name = f"vn-{network}"
    if len(name.encode()) <= IFNAMSIZ and _SAFE.match(name):
        return name
    return "vnbr" + hashlib.sha1(network.encode()).hexdigest()[:10]


def default_port_ifname(network: str, guest: str) -> str:
    name = f"{network}-{guest}"
    if len(name.encode()) <= IFNAMSIZ and _SAFE.match(name):
        return name
    return "vn" + hashlib.sha1(f"{network}/{guest}".encode()).hexdigest()[:10]


def link_group(network: str) -> int:
    """The link group of a network's links: 0x7600_0000 + 24 bits of CRC-32 of its name."""
    return 0x7600_0000 | (zlib.crc32(network.encode()) & 0xFF_FFFF)


def alias(network: str, role: str, guest: str | None = None) -> str:
    return f"{ALIAS_PREFIX}{network}:{role}" + (f":{guest}" if guest else "")


def parse_alias(text: str | None) -> tuple[str, str, str | None] | None:
    """``vnet:lab:port:web1`` -> ("lab", "port", "web1"); None when not one of ours."""
    if not text or not text.startswith(ALIAS_PREFIX):
        return None
    parts = text[len(ALIAS_PREFIX):].split(":", 2)
    if len(parts) < 2:
        return None
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


# Links taken out of service, waiting to be deleted in one batch (``vnet.guestpath``): their
# own group (outside the networks' 0x76xxxxxx range) and an alias of network "-" (no network
# has that name, so any reconcile also removes them as orphans).
GRAVE_GROUP = 0x7500_0001
GRAVE_ALIAS = ALIAS_PREFIX + "-:grave"


def grave_name(index: int) -> str:
    """A free name for a link being buried: unique per ifindex."""
    return f"vnd{index:08x}"
