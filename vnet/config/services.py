"""Definition sections for the services a network offers: ``ipv4`` (+ ``dhcp``), ``dns``, ``tftp``."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from vnet.config.source import (
    Reader,
    as_bool,
    as_duration,
    as_int,
    as_ipv4,
    as_str,
)
from vnet.model import (
    BootSpec,
    DhcpRange,
    DhcpSpec,
    DnsForwarder,
    DnsRecord,
    DnsSpec,
    Ipv4Spec,
    Reservation,
    StaticRoute,
    TftpSpec,
    normalize_mac,
)

_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DOMAIN = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def as_hostname(value: Any) -> str:
    text = as_str(value)
    if not _HOSTNAME.match(text):
        raise ValueError(f"{text!r} is not a valid host name (letters, digits, '-', at most 63)")
    return text


def as_domain(value: Any) -> str:
    text = as_str(value)
    if not _DOMAIN.match(text) or len(text) > 253:
        raise ValueError(f"{text!r} is not a valid domain name")
    return text.rstrip(".").lower()


def as_interface(value: Any) -> ipaddress.IPv4Interface:
    text = as_str(value)
    if "/" not in text:
        raise ValueError(f"{text!r} needs a prefix length, e.g. 10.77.0.1/24")
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as err:
        raise ValueError(f"{text!r} is not an IPv4 address with prefix: {err}") from err
    net = iface.network
    if net.prefixlen > 30:
        raise ValueError(f"{text!r}: prefix /{net.prefixlen} leaves no room for guests (max /30)")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{text!r} is the network or broadcast address of {net}")
    return iface


def as_range(value: Any) -> DhcpRange:
    text = as_str(value)
    start_s, sep, end_s = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a range; write START-END, e.g. 10.77.0.100-10.77.0.199")
    start, end = as_ipv4(start_s.strip()), as_ipv4(end_s.strip())
    if end < start:
        raise ValueError(f"range {text!r} ends before it starts")
    return DhcpRange(start, end)


def read_ipv4(r: Reader) -> Ipv4Spec | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"address", "dhcp"})
    address = r.convert("address", as_interface, required=True)
    if address is None:
        return None
    dhcp = read_dhcp(r.child("dhcp"), address) if r.has("dhcp") else None
    return Ipv4Spec(address=address, dhcp=dhcp)


def _in_subnet(r: Reader, key: str | int | None, ip: ipaddress.IPv4Address,
               iface: ipaddress.IPv4Interface, what: str) -> bool:
    net = iface.network
    if ip not in net:
        r.problem(key, f"{what} {ip} is outside {net}")
        return False
    if ip in (net.network_address, net.broadcast_address):
        r.problem(key, f"{what} {ip} is the network or broadcast address of {net}")
        return False
    return True


def read_dhcp(r: Reader, iface: ipaddress.IPv4Interface) -> DhcpSpec | None:
    if r.node is None:
        return DhcpSpec()
    if not r.expect_mapping():
        return None
    r.only_keys({
        "ranges", "lease-time", "reservations", "routes", "ntp", "mtu", "boot", "probe",
        "max-pool-share", "rate-limit",
    })
    ranges: list[DhcpRange] = []
    for i, item in r.items("ranges"):
        rng = item.value(as_range)
        if rng is None:
            continue
        holder = r.child("ranges")
        ok = _in_subnet(holder, i, rng.start, iface, "range start")
        ok = _in_subnet(holder, i, rng.end, iface, "range end") and ok
        if ok and rng.start <= iface.ip <= rng.end:
            holder.problem(i, f"range {rng.start}-{rng.end} contains the gateway {iface.ip}")
        if ok:
            for j, other in enumerate(ranges):
                if rng.start <= other.end and other.start <= rng.end:
                    holder.problem(i, f"range overlaps ranges[{j}]")
            ranges.append(rng)
    reservations: list[Reservation] = []
    seen_ip: dict[ipaddress.IPv4Address, int] = {}
    seen_mac: dict[str, int] = {}
    for i, item in r.items("reservations"):
        res = read_reservation(item)
        if res is None:
            continue
        holder = r.child("reservations")
        if not _in_subnet(holder, i, res.ip, iface, "reserved address"):
            continue
        if res.ip == iface.ip:
            holder.problem(i, f"reserved address {res.ip} is the gateway's")
        if res.ip in seen_ip:
            holder.problem(i, f"address {res.ip} is already reserved by reservations[{seen_ip[res.ip]}]")
        if res.mac and res.mac in seen_mac:
            holder.problem(i, f"MAC {res.mac} is already reserved by reservations[{seen_mac[res.mac]}]")
        seen_ip.setdefault(res.ip, i)
        if res.mac:
            seen_mac.setdefault(res.mac, i)
        reservations.append(res)
    routes: list[StaticRoute] = []
    for _, item in r.items("routes"):
        route = read_route(item)
        if route is not None:
            routes.append(route)
    ntp = tuple(x for _, item in r.items("ntp") if (x := item.value(as_ipv4)) is not None)
    boot = read_boot(r.child("boot")) if r.has("boot") else None
    share = r.convert("max-pool-share", _as_share, 1.0)
    return DhcpSpec(
        ranges=tuple(ranges),
        lease_time=r.convert("lease-time", as_duration, 3600) or 3600,
        reservations=tuple(reservations),
        routes=tuple(routes),
        ntp=ntp,
        mtu=r.convert("mtu", as_int(68, 65535, "mtu")),
        boot=boot,
        probe=r.convert("probe", as_bool, False) or False,
        max_pool_share=share if share is not None else 1.0,
        rate_limit=r.convert("rate-limit", as_int(1, 100000, "rate-limit"), 50) or 50,
    )


def _as_share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"must be a fraction in (0, 1], not {value!r}")
    return float(value)


def read_reservation(r: Reader) -> Reservation | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"mac", "ip", "name", "client-id", "boot-file"})
    mac = r.convert("mac", lambda v: normalize_mac(as_str(v)))
    client_id = r.convert("client-id", _as_client_id)
    if mac is None and client_id is None and not r.has("mac") and not r.has("client-id"):
        r.problem(None, "a reservation needs a mac or a client-id")
    ip = r.convert("ip", as_ipv4, required=True)
    name = r.convert("name", as_hostname)
    boot_file = r.convert("boot-file", as_str)
    if ip is None:
        return None
    return Reservation(mac=mac, ip=ip, name=name, client_id=client_id, boot_file=boot_file)


def _as_client_id(value: Any) -> bytes:
    text = as_str(value)
    try:
        return bytes.fromhex(text.replace(":", ""))
    except ValueError as err:
        raise ValueError(f"client-id {text!r} must be hex bytes, e.g. 01:52:54:00:00:00:10") from err


def read_route(r: Reader) -> StaticRoute | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"to", "via"})

    def as_net(v: Any) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(as_str(v))
        except ValueError as err:
            raise ValueError(f"{v!r} is not an IPv4 prefix: {err}") from err

    dest = r.convert("to", as_net, required=True)
    via = r.convert("via", as_ipv4, required=True)
    return StaticRoute(dest, via) if dest is not None and via is not None else None


def read_boot(r: Reader) -> BootSpec | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"file", "next-server", "arch", "ipxe", "no-pxedhcp"})
    arch: list[tuple[int, str]] = []
    node = r.raw("arch")
    if node is not None:
        sub = r.child("arch")
        if sub.expect_mapping():
            for key in node:
                if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= 65535:
                    sub.problem(key, f"architecture {key!r} must be an option 93 number (0..65535)")
                    continue
                f = sub.convert(key, as_str)
                if f is not None:
                    arch.append((key, f))
    no_pxedhcp = r.convert("no-pxedhcp", as_bool, True)
    return BootSpec(
        file=r.convert("file", as_str),
        next_server=r.convert("next-server", as_ipv4),
        arch_files=tuple(sorted(arch)),
        ipxe=r.convert("ipxe", as_str),
        no_pxedhcp=True if no_pxedhcp is None else no_pxedhcp,
    )


_RTYPES = ("A", "AAAA", "CNAME", "TXT", "SRV")


def read_dns(r: Reader) -> DnsSpec | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"domain", "enabled", "forwarders", "hosts", "records", "ttl"})
    forwarders: list[DnsForwarder] = []
    for _, item in r.items("forwarders"):
        fwd = _read_forwarder(item)
        if fwd is not None:
            forwarders.append(fwd)
    records: list[DnsRecord] = []
    for _, item in r.items("hosts"):
        if item.expect_mapping():
            item.only_keys({"name", "ip", "ttl"})
            name = item.convert("name", as_domain, required=True)
            ip = item.convert("ip", _as_any_ip, required=True)
            ttl = item.convert("ttl", as_int(0, 2**31 - 1, "ttl"), 300)
            if name and ip is not None:
                kind = "A" if ip.version == 4 else "AAAA"
                records.append(DnsRecord(name, kind, str(ip), ttl or 300))
    for _, item in r.items("records"):
        if item.expect_mapping():
            item.only_keys({"name", "type", "value", "ttl"})
            rname = item.convert("name", as_domain, required=True)
            rtype = item.convert("type", _as_rtype, required=True)
            value = item.convert("value", lambda v: str(v) if v is not None else as_str(v),
                                 required=True)
            ttl = item.convert("ttl", as_int(0, 2**31 - 1, "ttl"), 300)
            if rname and rtype and value is not None:
                records.append(DnsRecord(rname, rtype, value, ttl or 300))
    enabled = r.convert("enabled", as_bool, True)
    return DnsSpec(
        domain=r.convert("domain", as_domain),
        enabled=True if enabled is None else enabled,
        forwarders=tuple(forwarders),
        records=tuple(records),
        ttl=r.convert("ttl", as_int(0, 2**31 - 1, "ttl"), 60) or 60,
    )


def _as_rtype(value: Any) -> str:
    text = as_str(value).upper()
    if text not in _RTYPES:
        raise ValueError(f"record type {value!r} is not one of {', '.join(_RTYPES)}")
    return text


def _as_any_ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IP address") from err


def _as_server(value: Any) -> str:
    text = as_str(value)
    host, _, port = text.partition("#")
    _as_any_ip(host)
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"forwarder {text!r}: port must be 1..65535")
    return text


def _read_forwarder(r: Reader) -> DnsForwarder | None:
    if isinstance(r.node, str):
        address = r.value(_as_server)
        return DnsForwarder(address) if address else None
    if not r.expect_mapping():
        return None
    r.only_keys({"address", "domain"})
    address = r.convert("address", _as_server, required=True)
    domain = r.convert("domain", as_domain)
    return DnsForwarder(address, domain) if address else None


def read_tftp(r: Reader) -> TftpSpec | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"root", "max-transfers-per-client"})

    def as_root(v: Any) -> str:
        text = as_str(v)
        if not text.startswith("/"):
            raise ValueError(f"tftp root {text!r} must be an absolute path")
        return text

    root = r.convert("root", as_root, required=True)
    limit = r.convert("max-transfers-per-client", as_int(1, 1000, "max-transfers-per-client"), 8)
    return TftpSpec(root=root, max_transfers_per_client=limit or 8) if root else None
