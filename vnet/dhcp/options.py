"""DHCPv4 option codes and value encoders (RFC 2132, 3442 routes, 3397 search, iPXE 175).

Pure functions from typed values to option bytes; the reply builder in ``vnet.dhcp.server``
combines them. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

Route = tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]

SUBNET_MASK = 1
ROUTER = 3
DNS_SERVERS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
INTERFACE_MTU = 26
BROADCAST = 28
NTP_SERVERS = 42
VENDOR_SPECIFIC = 43
REQUESTED_IP = 50
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_REQUEST_LIST = 55
MESSAGE = 56
MAX_MESSAGE_SIZE = 57
RENEWAL_TIME = 58
REBINDING_TIME = 59
VENDOR_CLASS = 60
CLIENT_ID = 61
TFTP_SERVER_NAME = 66
BOOTFILE_NAME = 67
USER_CLASS = 77
RELAY_AGENT_INFO = 82
CLIENT_ARCH = 93
DOMAIN_SEARCH = 119
CLASSLESS_ROUTES = 121
IPXE_ENCAP = 175
IPXE_NO_PXEDHCP = 176


def ip(addr: ipaddress.IPv4Address) -> bytes:
    return addr.packed


def ips(addrs: Iterable[ipaddress.IPv4Address]) -> bytes:
    return b"".join(a.packed for a in addrs)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def u16(value: int) -> bytes:
    return struct.pack("!H", value)


def text(value: str) -> bytes:
    return value.encode()


def classless_routes(routes: Iterable[Route]) -> bytes:
    """RFC 3442: per route the prefix length, the significant octets of the destination, the
    gateway."""
    out = bytearray()
    for net, gateway in routes:
        width = (net.prefixlen + 7) // 8
        out.append(net.prefixlen)
        out += net.network_address.packed[:width]
        out += gateway.packed
    return bytes(out)


def parse_classless_routes(data: bytes) -> list[Route]:
    """Inverse of ``classless_routes`` (used by tests and tools); ValueError on bad data."""
    routes: list[Route] = []
    i = 0
    while i < len(data):
        plen = data[i]
        if plen > 32:
            raise ValueError(f"route prefix length {plen} > 32")
        width = (plen + 7) // 8
        if i + 1 + width + 4 > len(data):
            raise ValueError("truncated classless route")
        dest = data[i + 1 : i + 1 + width] + b"\0" * (4 - width)
        gateway = data[i + 1 + width : i + 5 + width]
        routes.append((ipaddress.IPv4Network((dest, plen)), ipaddress.IPv4Address(gateway)))
        i += 5 + width
    return routes


def domain_search(domains: Iterable[str]) -> bytes:
    """RFC 3397: DNS wire-format names, uncompressed (always valid, a little longer)."""
    out = bytearray()
    for domain in domains:
        for label in domain.strip(".").split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode()
            if not raw or len(raw) > 63:
                raise ValueError(f"domain {domain!r} has an empty or over-long label")
            out.append(len(raw))
            out += raw
        out.append(0)
    return bytes(out)


def ipxe_no_pxedhcp() -> bytes:
    """Encapsulated iPXE option 175 holding 176 (no-pxedhcp) = 1: iPXE skips the ~3 s wait for
    a ProxyDHCP server."""
    return bytes((IPXE_NO_PXEDHCP, 1, 1))


def is_ipxe(options: dict[int, bytes]) -> bool:
    """iPXE says so in user class (77) as ``iPXE`` (raw, or RFC 3004 length-prefixed), and by
    sending its own option 175."""
    user_class = options.get(USER_CLASS)
    if user_class is not None and (user_class == b"iPXE" or user_class[1:5] == b"iPXE"):
        return True
    return IPXE_ENCAP in options


def client_arch(options: dict[int, bytes]) -> int | None:
    """The first client system architecture of option 93 (0 BIOS, 7/9 x86-64 UEFI, ...)."""
    value = options.get(CLIENT_ARCH)
    if value is None or len(value) < 2:
        return None
    return int.from_bytes(value[:2], "big")
