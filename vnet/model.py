"""The validated model of networks: frozen dataclasses, no I/O.

Everything here is already checked: ``vnet.config`` builds these values from files and collects
every problem first. Other modules (planner, services, policy compiler) only read them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IFNAMSIZ = 15  # usable bytes of a Linux interface name


class Mode(enum.StrEnum):
    NAT = "nat"
    ROUTE = "route"
    ISOLATED = "isolated"
    OPEN = "open"
    BRIDGE = "bridge"
    MACVTAP = "macvtap"


class PortKind(enum.StrEnum):
    TAP = "tap"
    MACVTAP = "macvtap"
    VETH = "veth"


class MacvtapMode(enum.StrEnum):
    VEPA = "vepa"
    BRIDGE = "bridge"
    PRIVATE = "private"
    PASSTHROUGH = "passthrough"


BOND_MODES = (
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
)


def normalize_mac(text: str) -> str:
    """``52-54-00-AB-CD-EF`` -> ``52:54:00:ab:cd:ef``; ValueError if it is not a MAC."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and p.isascii() and p.isalnum() for p in parts):
        raise ValueError(f"{text!r} is not a MAC address (want six hex pairs, e.g. 52:54:00:00:00:01)")
    try:
        octets = bytes(int(p, 16) for p in parts)
    except ValueError as err:
        raise ValueError(f"{text!r} is not a MAC address (non-hex digit)") from err
    return ":".join(f"{b:02x}" for b in octets)


def check_ifname(name: str) -> str:
    """Return ``name`` if the kernel would accept it as an interface name, else ValueError."""
    raw = name.encode()
    if not raw:
        raise ValueError("interface name is empty")
    if len(raw) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is {len(raw)} bytes, the kernel allows {IFNAMSIZ}")
    if name in (".", "..") or any(c in name for c in "/: \t\n\r\v\f\0"):
        raise ValueError(f"interface name {name!r} contains a character the kernel refuses")
    return name


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    stp: bool = False
    mtu: int | None = None
    mac: str | None = None
    vlan_filtering: bool = False


@dataclass(frozen=True)
class BondSpec:
    name: str
    mode: str = "active-backup"
    miimon: int = 100
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class UplinkSpec:
    """The host's way out: a plain device, or a bond of members; optionally a VLAN tag on top."""

    ifname: str | None = None
    bond: BondSpec | None = None
    vlan: int | None = None

    @property
    def base(self) -> str:
        """The device the VLAN (if any) sits on."""
        if self.bond is not None:
            return self.bond.name
        assert self.ifname is not None
        return self.ifname

    @property
    def device(self) -> str:
        """The device that carries the network's traffic (enslaved, egress or macvtap parent)."""
        return vlan_ifname(self.base, self.vlan) if self.vlan is not None else self.base


def vlan_ifname(base: str, vlan_id: int) -> str:
    """``bond0`` + 42 -> ``bond0.42``, shortened to fit IFNAMSIZ by trimming the base."""
    suffix = f".{vlan_id}"
    return base[: IFNAMSIZ - len(suffix)] + suffix


@dataclass(frozen=True)
class PortVlan:
    """Bridge VLAN membership of a port: ``pvid`` untagged (access/native), ``tagged`` trunk VLANs."""

    pvid: int | None = None
    tagged: tuple[int, ...] = ()


@dataclass(frozen=True)
class DhcpRange:
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, ipaddress.IPv4Address) and self.start <= ip <= self.end

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True)
class Reservation:
    mac: str | None
    ip: ipaddress.IPv4Address
    name: str | None = None
    client_id: bytes | None = None
    boot_file: str | None = None


@dataclass(frozen=True)
class StaticRoute:
    """A classless static route (option 121) handed to DHCP clients."""

    destination: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


@dataclass(frozen=True)
class BootSpec:
    """PXE/iPXE boot options.

    ``file`` is the network-wide boot file; ``arch_files`` maps option 93 client architecture
    numbers to files; ``ipxe`` is what clients identifying as iPXE get (a TFTP file or a URL).
    """

    file: str | None = None
    next_server: ipaddress.IPv4Address | None = None
    arch_files: tuple[tuple[int, str], ...] = ()
    ipxe: str | None = None
    no_pxedhcp: bool = True


@dataclass(frozen=True)
class DhcpSpec:
    ranges: tuple[DhcpRange, ...] = ()
    lease_time: int = 3600
    reservations: tuple[Reservation, ...] = ()
    routes: tuple[StaticRoute, ...] = ()
    ntp: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int | None = None
    boot: BootSpec | None = None
    probe: bool = False
    # The most leases one MAC (or client-id) may hold, and the share of the pool a flooding
    # source of new clients may take; see docs/dhcp.md.
    max_pool_share: float = 1.0
    rate_limit: int = 50  # requests per second per MAC before we stop answering it


@dataclass(frozen=True)
class Ipv4Spec:
    address: ipaddress.IPv4Interface
    dhcp: DhcpSpec | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.address.network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.address.ip


@dataclass(frozen=True)
class DnsRecord:
    """A static DNS record: ``rtype`` is A, AAAA, CNAME, TXT or SRV; ``value`` is its text form."""

    name: str
    rtype: str
    value: str
    ttl: int = 300


@dataclass(frozen=True)
class DnsForwarder:
    address: str  # "IP" or "IP#PORT"
    domain: str | None = None  # None: all names outside our zone


@dataclass(frozen=True)
class DnsSpec:
    domain: str | None = None
    enabled: bool = True
    forwarders: tuple[DnsForwarder, ...] = ()
    records: tuple[DnsRecord, ...] = ()
    ttl: int = 60


@dataclass(frozen=True)
class TftpSpec:
    root: str
    max_transfers_per_client: int = 8


class Origin(enum.StrEnum):
    """Where a guest's port comes from: a definition file, or an attachment made at run time."""

    FILE = "file"
    API = "api"
    QEMU = "qemu"
    LIBVIRT = "libvirt"


@dataclass(frozen=True)
class Attachment:
    """A guest port the files do not declare, made at run time (API, QEMU or libvirt hook).

    Kept by the daemon in the state dir; desired state = files + attachments. ``policies`` come
    on top of the network's own, as for a declared guest.
    """

    network: str
    guest: str
    mac: str
    ifname: str | None  # None: pending, the TAP libvirt creates (vnetN) is adopted by MAC
    port: PortKind = PortKind.TAP
    policies: tuple[str, ...] = ()
    netns: str | None = None
    origin: Origin = Origin.API


@dataclass(frozen=True)
class Guest:
    name: str
    mac: str
    ifname: str
    port: PortKind = PortKind.TAP
    policies: tuple[str, ...] = ()
    vlan: PortVlan | None = None
    netns: str | None = None
    owner: int | None = None
    group: int | None = None
    multi_queue: bool = False
    vnet_hdr: bool = True
    ip: ipaddress.IPv4Address | None = None  # from a reservation with the same MAC
    origin: Origin = Origin.FILE


@dataclass(frozen=True)
class PortForward:
    proto: str
    port: int
    guest: str
    to_port: int


@dataclass(frozen=True)
class Network:
    name: str
    mode: Mode
    source: str = "<memory>"
    bridge: BridgeSpec | None = None
    uplink: UplinkSpec | None = None
    macvtap_mode: MacvtapMode = MacvtapMode.BRIDGE
    ipv4: Ipv4Spec | None = None
    dns: DnsSpec | None = None
    tftp: TftpSpec | None = None
    policies: tuple[str, ...] = ()
    guests: tuple[Guest, ...] = ()
    forwards: tuple[PortForward, ...] = ()
    # Ports on the bridge that are no guest's: "isolated" (DHCP to vnet only) or "allow".
    unknown_ports: str = "isolated"

    def guest(self, name: str) -> Guest | None:
        return next((g for g in self.guests if g.name == name), None)


@dataclass(frozen=True)
class Model:
    """Every network of one config dir, in name order."""

    networks: tuple[Network, ...] = field(default=())

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)
