"""Builders for DHCP requests and a network model used by the DHCP unit tests."""

from __future__ import annotations

import ipaddress

from vnet.dhcp import codec
from vnet.dhcp import options as o
from vnet.model import (
    BootSpec,
    BridgeSpec,
    DhcpRange,
    DhcpSpec,
    DnsSpec,
    Ipv4Spec,
    Mode,
    Network,
    Reservation,
    StaticRoute,
)

IP = ipaddress.IPv4Address
SERVER = IP("10.77.0.1")


def network(
    *,
    start: str = "10.77.0.100",
    end: str = "10.77.0.199",
    reservations: tuple[Reservation, ...] = (),
    boot: BootSpec | None = None,
    lease_time: int = 600,
    rate_limit: int = 50,
    max_pool_share: float = 1.0,
    name: str = "lab",
    address: str = "10.77.0.1/24",
    bridge: str = "vn-lab",
) -> Network:
    return Network(
        name=name,
        mode=Mode.NAT,
        bridge=BridgeSpec(bridge),
        ipv4=Ipv4Spec(
            ipaddress.IPv4Interface(address),
            DhcpSpec(
                ranges=(DhcpRange(IP(start), IP(end)),),
                lease_time=lease_time,
                reservations=reservations,
                routes=(StaticRoute(ipaddress.IPv4Network("192.168.50.0/24"), SERVER),),
                ntp=(SERVER,),
                mtu=1400,
                boot=boot,
                rate_limit=rate_limit,
                max_pool_share=max_pool_share,
            ),
        ),
        dns=DnsSpec(domain="lab.test"),
    )


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")


def request(
    msg_type: int,
    mac: str = "52:54:00:00:00:01",
    *,
    xid: int = 0x1234,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    flags: int = 0,
    **opts: bytes,
) -> codec.Packet:
    """A client message; options by name: requested, server_id, client_id, prl, hostname,
    user_class, arch, relay."""
    names = {
        "requested": o.REQUESTED_IP,
        "server_id": o.SERVER_ID,
        "client_id": o.CLIENT_ID,
        "prl": o.PARAMETER_REQUEST_LIST,
        "hostname": o.HOSTNAME,
        "user_class": o.USER_CLASS,
        "arch": o.CLIENT_ARCH,
        "relay": o.RELAY_AGENT_INFO,
        "ipxe": o.IPXE_ENCAP,
    }
    options = {o.MESSAGE_TYPE: bytes((msg_type,))}
    for name, value in opts.items():
        options[names[name]] = value
    return codec.Packet(
        op=codec.BOOTREQUEST, xid=xid, flags=flags, ciaddr=IP(ciaddr).packed,
        giaddr=IP(giaddr).packed, chaddr=mac_bytes(mac), options=options,
    )


def roundtrip(pkt: codec.Packet) -> codec.Packet:
    """Through the wire and back, as the server sees it."""
    return codec.decode(codec.encode(pkt))
