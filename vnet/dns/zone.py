"""Authoritative DNS data of one network, built from the model and the current leases.

``build_zone(network, leases, serial)`` is pure: it turns the network's ``dns`` section, its DHCP
reservations, its guests and a snapshot of lease hostnames into a :class:`Zone` that the answer
function reads. A lease change builds a new Zone (cheap: one dict per name) and the server swaps
it in; nothing here is mutated after construction.

Name rules (docs/dns.md): a record name is relative to the network's domain unless it already
ends with it (``www``, ``_http._tcp`` and ``www.lab.vnet`` all land in ``lab.vnet``); a CNAME or
SRV target is relative only when it is a single label. Precedence when two sources
want the same name: static records, then reservation names, then guest names, then lease
hostnames (a client cannot take over a configured name). ``ns.<domain>`` is the zone's name
server (the gateway) unless a static record claims it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A

from vnet.errors import ConfigError, Problem
from vnet.model import Network

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 86400

RRSets = Mapping[int, tuple[RR, ...]]


def fqdn(name: str) -> str:
    """Lowercase, with exactly one trailing dot (``Foo.Bar`` -> ``foo.bar.``; root is ``.``)."""
    name = name.lower().rstrip(".")
    return name + "." if name else "."


def sanitize_hostname(hostname: str | None) -> str | None:
    """A lease hostname as one DNS label (first label, lowercase), or None if it is not one."""
    if not hostname:
        return None
    label = hostname.strip().split(".", 1)[0].lower()
    return label if _LABEL.match(label) else None


def reverse_apex(network: ipaddress.IPv4Network) -> str:
    """The in-addr.arpa name covering ``network`` on an octet boundary (/20 -> y.x.in-addr.arpa)."""
    octets = max(1, min(3, network.prefixlen // 8))
    parts = str(network.network_address).split(".")[:octets]
    return ".".join(reversed(parts)) + ".in-addr.arpa."


def ptr_name(ip: ipaddress.IPv4Address) -> str:
    return ip.reverse_pointer + "."


@dataclass(frozen=True)
class Zone:
    """What the server answers with authority. Names are :func:`fqdn` strings.

    ``rrsets`` holds every owner name's records by type; ``nodes`` every owner name plus its
    ancestors up to the apex that covers it (a node without records answers NODATA, not
    NXDOMAIN). ``apexes`` maps each apex (forward domain, reverse zone) to its SOA and NS.
    """

    domain: str | None
    subnet: ipaddress.IPv4Network
    reverse: str
    rrsets: Mapping[str, RRSets]
    nodes: frozenset[str]
    soa: Mapping[str, RR]
    ns: Mapping[str, RR]
    negative_ttl: int
    serial: int

    def apex_of(self, name: str) -> str | None:
        """The apex we are authoritative under for ``name`` (an :func:`fqdn`), or None."""
        if self.domain is not None and (name == self.domain or name.endswith("." + self.domain)):
            return self.domain
        if (name == self.reverse or name.endswith("." + self.reverse)) and self._in_subnet(name):
            return self.reverse
        return None

    def _in_subnet(self, name: str) -> bool:
        """Whether a reverse name denotes addresses that overlap our subnet."""
        head = name[: len(name) - len(self.reverse)].rstrip(".")
        apex_octets = self.reverse.count(".") - 2
        octets = [*reversed(self.reverse[: -len(".in-addr.arpa.")].split("."))]
        if head:
            labels = head.split(".")
            if len(labels) + apex_octets > 4:
                return True  # deeper than an address: ours if its parent is (answers NXDOMAIN)
            for label in reversed(labels):
                if not label.isdigit() or int(label) > 255 or (len(label) > 1 and label[0] == "0"):
                    return True  # garbage under our apex: NXDOMAIN from us, not forwarded
                octets.append(label)
        prefix = ipaddress.IPv4Network(
            (".".join(octets + ["0"] * (4 - len(octets))), 8 * len(octets))
        )
        return prefix.overlaps(self.subnet)


class _Builder:
    def __init__(self, network: Network) -> None:
        self.network = network
        self.rrsets: dict[str, dict[int, list[RR]]] = {}
        self.owner: dict[str, str] = {}  # name -> which source holds it (static records win)
        self.ptr: dict[ipaddress.IPv4Address, str] = {}
        self.problems: list[Problem] = []

    def add(self, name: str, rtype: int, rdata: object, ttl: int, source: str) -> None:
        holder = self.owner.setdefault(name, source)
        if holder != source:
            return
        sets = self.rrsets.setdefault(name, {})
        if (rtype == QTYPE.CNAME and any(t != QTYPE.CNAME for t in sets)) or (
            rtype != QTYPE.CNAME and QTYPE.CNAME in sets
        ):
            self.problem(source, f"{name} has a CNAME and other records")
            return
        rrs = sets.setdefault(rtype, [])
        rr = RR(name, rtype, rdata=rdata, ttl=ttl)
        if all(existing.rdata != rr.rdata for existing in rrs):
            rrs.append(rr)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.network.source, 0, path, message))


def _owner_name(name: str, domain: str | None) -> str:
    name = fqdn(name)
    if domain is None or name == domain or name.endswith("." + domain):
        return name
    return name + domain


def _target_name(value: str, domain: str | None) -> str:
    """A CNAME/SRV target: a single label is relative to the domain, a dotted name absolute."""
    value = value.strip()
    if "." in value.rstrip(".") or domain is None or value.endswith("."):
        return fqdn(value)
    return fqdn(value) + domain


def _static_records(b: _Builder, domain: str | None) -> None:
    spec = b.network.dns
    assert spec is not None
    for i, rec in enumerate(spec.records):
        path = f"dns.records[{i}]"
        name = _owner_name(rec.name, domain)
        value = rec.value.strip()
        try:
            rtype, rdata = _rdata(rec.rtype.upper(), value, domain)
        except ValueError as err:
            b.problem(path, f"{rec.rtype} {rec.name!r}: {err}")
            continue
        b.add(name, rtype, rdata, rec.ttl, "static")
        if rtype == QTYPE.A:
            ip = ipaddress.IPv4Address(value)
            if ip in b.network.ipv4.network:  # type: ignore[union-attr]
                b.ptr.setdefault(ip, name)


def _rdata(rtype: str, value: str, domain: str | None) -> tuple[int, object]:
    if rtype == "A":
        return QTYPE.A, A(str(ipaddress.IPv4Address(value)))
    if rtype == "AAAA":
        return QTYPE.AAAA, AAAA(str(ipaddress.IPv6Address(value)))
    if rtype == "CNAME":
        return QTYPE.CNAME, CNAME(_target_name(value, domain))
    if rtype == "TXT":
        raw = value.encode()
        return QTYPE.TXT, TXT([raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""])
    if rtype == "SRV":
        parts = value.split()
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 65536 for p in parts[:3]):
            raise ValueError(f"SRV value {value!r} must be 'priority weight port target'")
        prio, weight, port = (int(p) for p in parts[:3])
        return QTYPE.SRV, SRV(prio, weight, port, _target_name(parts[3], domain))
    raise ValueError(f"record type {rtype!r} is not one of A, AAAA, CNAME, TXT, SRV")


def _address_names(
    b: _Builder,
    domain: str | None,
    named: Iterable[tuple[str | None, ipaddress.IPv4Address]],
    source: str,
    ttl: int,
) -> None:
    for label, ip in named:
        host = sanitize_hostname(label)
        if host is None:
            continue
        name = _owner_name(host, domain)
        if b.owner.get(name, source) != source:
            continue
        b.add(name, QTYPE.A, A(str(ip)), ttl, source)
        b.ptr.setdefault(ip, name)


def build_zone(
    network: Network,
    leases: Mapping[ipaddress.IPv4Address, str],
    serial: int,
) -> Zone | None:
    """The network's authoritative data, or None when it has no IPv4 or DNS is disabled.

    ``leases`` maps each leased address to the hostname its client sent (raw; sanitised here),
    oldest first: when two leases claim one name, the newest holds it.
    Raises ConfigError naming ``dns.records[i]`` for a record whose value does not parse.
    """
    if network.ipv4 is None or (network.dns is not None and not network.dns.enabled):
        return None
    spec = network.dns
    ttl = spec.ttl if spec is not None else 60
    domain = fqdn(spec.domain) if spec is not None and spec.domain else None
    subnet = network.ipv4.network
    gateway = network.ipv4.gateway
    b = _Builder(network)
    if spec is not None:
        _static_records(b, domain)
    ns_name = "ns." + domain if domain else "localhost."
    if domain is not None:
        b.add(ns_name, QTYPE.A, A(str(gateway)), ttl, "ns")
    b.ptr.setdefault(gateway, ns_name)
    reservations = network.ipv4.dhcp.reservations if network.ipv4.dhcp else ()
    reserved_ips = {r.ip for r in reservations if r.name}
    _address_names(b, domain, ((r.name, r.ip) for r in reservations), "reservation", ttl)
    _address_names(b, domain, ((g.name, g.ip) for g in network.guests if g.ip), "guest", ttl)
    # Newest lease first: a client that moved to a new address takes its name along.
    dynamic = [(ip, h) for ip, h in reversed(list(leases.items())) if ip not in reserved_ips]
    for ip, host in dynamic:
        if ip in subnet:
            _address_names(b, domain, [(host, ip)], f"lease:{ip}", ttl)
    if b.problems:
        raise ConfigError(b.problems)

    rev = reverse_apex(subnet)
    for ip, name in b.ptr.items():
        b.rrsets.setdefault(ptr_name(ip), {})[QTYPE.PTR] = [
            RR(ptr_name(ip), QTYPE.PTR, rdata=PTR(name), ttl=ttl)
        ]
    apexes = [rev] if domain is None else [domain, rev]
    soa: dict[str, RR] = {}
    ns: dict[str, RR] = {}
    for apex in apexes:
        soa[apex] = RR(
            apex,
            QTYPE.SOA,
            ttl=ttl,
            rdata=SOA(
                ns_name,
                "hostmaster." + (domain or apex),
                (serial % 2**32, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl),
            ),
        )
        ns[apex] = RR(apex, QTYPE.NS, ttl=ttl, rdata=NS(ns_name))
        sets = b.rrsets.setdefault(apex, {})
        if QTYPE.CNAME not in sets:
            sets[QTYPE.SOA] = [soa[apex]]
            sets[QTYPE.NS] = [ns[apex]]
    nodes: set[str] = set()
    for name in b.rrsets:
        nodes.add(name)
        for apex in apexes:
            if name.endswith("." + apex):
                labels = name[: -len(apex) - 1].split(".")
                nodes.update(".".join(labels[i:]) + "." + apex for i in range(len(labels)))
    return Zone(
        domain=domain,
        subnet=subnet,
        reverse=rev,
        rrsets={n: {t: tuple(rrs) for t, rrs in sets.items()} for n, sets in b.rrsets.items()},
        nodes=frozenset(nodes),
        soa=soa,
        ns=ns,
        negative_ttl=ttl,
        serial=serial,
    )
