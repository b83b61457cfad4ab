"""The DNS core, table-driven: zone built from a model + leases, and what a client gets back."""

from __future__ import annotations

import ipaddress

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from vnet.dns.answer import Forward, Reply, handle
from vnet.dns.forward import Routes, Upstream
from vnet.dns.zone import Zone, build_zone, reverse_apex, sanitize_hostname
from vnet.errors import ConfigError
from vnet.model import (
    DhcpSpec,
    DnsForwarder,
    DnsRecord,
    DnsSpec,
    Guest,
    Ipv4Spec,
    Mode,
    Network,
    Reservation,
)

IP = ipaddress.IPv4Address


def network(
    records: tuple[DnsRecord, ...] = (),
    forwarders: tuple[DnsForwarder, ...] = (),
    domain: str | None = "lab.vnet",
    address: str = "10.77.0.1/24",
    enabled: bool = True,
) -> Network:
    return Network(
        name="lab",
        mode=Mode.NAT,
        ipv4=Ipv4Spec(
            ipaddress.IPv4Interface(address),
            DhcpSpec(reservations=(
                Reservation("52:54:00:00:00:05", IP("10.77.0.5"), "db"),
                Reservation("52:54:00:00:00:06", IP("10.77.0.6")),
            )),
        ),
        dns=DnsSpec(domain=domain, enabled=enabled, forwarders=forwarders, records=records),
        guests=(Guest("web", "52:54:00:00:00:07", "tap-web", ip=IP("10.77.0.7")),),
    )


RECORDS = (
    DnsRecord("www", "CNAME", "db"),
    DnsRecord("ext", "CNAME", "example.org"),
    DnsRecord("loop", "CNAME", "www"),
    DnsRecord("dangling", "CNAME", "gone"),
    DnsRecord("files", "A", "10.77.0.20", ttl=120),
    DnsRecord("files.lab.vnet", "A", "10.77.0.21"),
    DnsRecord("v6", "AAAA", "fd00::20"),
    DnsRecord("info", "TXT", "hello"),
    DnsRecord("big", "TXT", "x" * 1000),
    DnsRecord("_http._tcp", "SRV", "10 5 80 files"),
    DnsRecord("a.deep.sub", "A", "10.77.0.22"),
)
LEASES = {IP("10.77.0.50"): "Alpha", IP("10.77.0.51"): "bad_name!", IP("10.77.0.52"): "db"}


@pytest.fixture(scope="module")
def zone() -> Zone:
    z = build_zone(network(RECORDS), LEASES, serial=7)
    assert z is not None
    return z


ROUTES = Routes((DnsForwarder("192.0.2.53"), DnsForwarder("192.0.2.54#5353", "corp.example")))


def ask(zone: Zone, name: str, qtype: str = "A", *, edns: int | None = None,
        routes: Routes = ROUTES, allowed: bool = True, tcp: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    out = handle(q.pack(), zone, routes, allowed=allowed, tcp=tcp)
    assert isinstance(out, Reply), out
    return DNSRecord.parse(out.wire)


def rdata(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


@pytest.mark.parametrize(
    ("name", "qtype", "expected"),
    [
        ("db.lab.vnet", "A", ["10.77.0.5"]),
        ("DB.Lab.Vnet.", "A", ["10.77.0.5"]),
        ("web.lab.vnet", "A", ["10.77.0.7"]),
        ("alpha.lab.vnet", "A", ["10.77.0.50"]),
        ("files.lab.vnet", "A", ["10.77.0.20", "10.77.0.21"]),
        ("www.lab.vnet", "A", ["db.lab.vnet.", "10.77.0.5"]),
        ("loop.lab.vnet", "A", ["www.lab.vnet.", "db.lab.vnet.", "10.77.0.5"]),
        ("www.lab.vnet", "CNAME", ["db.lab.vnet."]),
        ("ext.lab.vnet", "A", ["example.org."]),
        ("v6.lab.vnet", "AAAA", ["fd00::20"]),
        ("info.lab.vnet", "TXT", ['"hello"']),
        ("_http._tcp.lab.vnet", "SRV", ["10 5 80 files.lab.vnet."]),
        ("a.deep.sub.lab.vnet", "A", ["10.77.0.22"]),
        ("ns.lab.vnet", "A", ["10.77.0.1"]),
        ("lab.vnet", "NS", ["ns.lab.vnet."]),
        ("5.0.77.10.in-addr.arpa", "PTR", ["db.lab.vnet."]),
        ("7.0.77.10.in-addr.arpa", "PTR", ["web.lab.vnet."]),
        ("50.0.77.10.in-addr.arpa", "PTR", ["alpha.lab.vnet."]),
        ("20.0.77.10.in-addr.arpa", "PTR", ["files.lab.vnet."]),
        ("1.0.77.10.in-addr.arpa", "PTR", ["ns.lab.vnet."]),
        ("0.77.10.in-addr.arpa", "NS", ["ns.lab.vnet."]),
    ],
)
def test_authoritative_answers(zone: Zone, name: str, qtype: str, expected: list[str]) -> None:
    reply = ask(zone, name, qtype)
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.aa == 1
    assert rdata(reply) == expected


@pytest.mark.parametrize(
    ("name", "qtype", "rcode"),
    [
        ("nothere.lab.vnet", "A", RCODE.NXDOMAIN),
        ("x.db.lab.vnet", "A", RCODE.NXDOMAIN),
        ("db.lab.vnet", "AAAA", RCODE.NOERROR),  # NODATA: the name exists
        ("db.lab.vnet", "MX", RCODE.NOERROR),
        ("deep.sub.lab.vnet", "A", RCODE.NOERROR),  # an empty non-terminal exists
        ("sub.lab.vnet", "TXT", RCODE.NOERROR),
        ("lab.vnet", "A", RCODE.NOERROR),
        ("dangling.lab.vnet", "A", RCODE.NXDOMAIN),  # RFC 6604: the rcode of the chain's end
        ("99.0.77.10.in-addr.arpa", "PTR", RCODE.NXDOMAIN),
        ("51.0.77.10.in-addr.arpa", "PTR", RCODE.NXDOMAIN),  # that lease's name was unusable
        ("5.0.77.10.in-addr.arpa", "A", RCODE.NOERROR),
        ("foo.0.77.10.in-addr.arpa", "PTR", RCODE.NXDOMAIN),
    ],
)
def test_negative_answers(zone: Zone, name: str, qtype: str, rcode: int) -> None:
    reply = ask(zone, name, qtype)
    assert reply.header.rcode == rcode
    assert reply.header.aa == 1
    assert [str(rr.rname) for rr in reply.auth if rr.rtype == QTYPE.SOA] in (
        ["lab.vnet."], ["0.77.10.in-addr.arpa."],
    )
    if name != "dangling.lab.vnet":
        assert reply.rr == []


def test_soa_serial_and_negative_ttl(zone: Zone) -> None:
    soa = ask(zone, "lab.vnet", "SOA").rr[0]
    assert soa.rdata.times[0] == 7
    assert soa.rdata.times[4] == 60
    assert str(soa.rdata.mname) == "ns.lab.vnet."


def test_srv_answer_carries_the_target_address(zone: Zone) -> None:
    reply = ask(zone, "_http._tcp.lab.vnet", "SRV")
    assert sorted(str(rr.rdata) for rr in reply.ar) == ["10.77.0.20", "10.77.0.21"]


def test_a_client_cannot_take_a_configured_name(zone: Zone) -> None:
    assert rdata(ask(zone, "db.lab.vnet")) == ["10.77.0.5"]
    assert ask(zone, "52.0.77.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN


def test_newest_lease_holds_a_contested_name() -> None:
    z = build_zone(network(), {IP("10.77.0.60"): "pc", IP("10.77.0.61"): "pc"}, 1)
    assert z is not None
    assert rdata(ask(z, "pc.lab.vnet")) == ["10.77.0.61"]


def test_leases_outside_the_subnet_are_ignored() -> None:
    z = build_zone(network(), {IP("192.168.9.9"): "stray"}, 1)
    assert z is not None
    assert ask(z, "stray.lab.vnet").header.rcode == RCODE.NXDOMAIN


def test_forwarded_and_refused_names(zone: Zone) -> None:
    q = DNSRecord.question("example.com", "A")
    out = handle(q.pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Forward)
    assert out.upstreams == (Upstream("192.0.2.53"),)
    out = handle(DNSRecord.question("a.corp.example").pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Forward)
    assert out.upstreams == (Upstream("192.0.2.54", 5353),)
    # Addresses outside our subnet in a reverse zone we share are someone else's.
    out = handle(DNSRecord.question("5.1.77.10.in-addr.arpa", "PTR").pack(), zone, ROUTES,
                 allowed=True, tcp=False)
    assert isinstance(out, Forward)
    # Without forwarders we answer only our own names: never an open resolver.
    reply = ask(zone, "example.com", routes=Routes(()))
    assert reply.header.rcode == RCODE.REFUSED
    assert reply.header.ra == 0


def test_outside_clients_are_refused_even_for_our_names(zone: Zone) -> None:
    for name in ("db.lab.vnet", "example.com"):
        reply = ask(zone, name, allowed=False)
        assert reply.header.rcode == RCODE.REFUSED
        assert reply.rr == []


def test_truncation_and_edns(zone: Zone) -> None:
    small = ask(zone, "big.lab.vnet", "TXT")
    assert small.header.tc == 1
    assert small.rr == []
    assert ask(zone, "big.lab.vnet", "TXT", tcp=True).rr
    fits = ask(zone, "big.lab.vnet", "TXT", edns=1232)
    assert fits.header.tc == 0
    assert "".join(str(rr.rdata) for rr in fits.rr).count("x") == 1000
    assert [rr.rtype for rr in fits.ar] == [QTYPE.OPT]
    assert ask(zone, "big.lab.vnet", "TXT", edns=600).header.tc == 1
    assert ask(zone, "db.lab.vnet", edns=100).header.tc == 0  # below 512 counts as 512


def test_edns_version_we_do_not_speak_gets_badvers(zone: Zone) -> None:
    q = DNSRecord.question("db.lab.vnet")
    q.add_ar(EDNS0(udp_len=1232, version=1))
    out = handle(q.pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Reply)
    reply = DNSRecord.parse(out.wire)
    assert reply.ar[0].edns_rcode == 1  # extended RCODE 16 = BADVERS
    assert reply.rr == []


def test_odd_queries(zone: Zone) -> None:
    q = DNSRecord.question("db.lab.vnet")
    q.header.opcode = 2  # STATUS
    out = handle(q.pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Reply)
    assert DNSRecord.parse(out.wire).header.rcode == RCODE.NOTIMP
    assert ask(zone, "lab.vnet", "AXFR").header.rcode == RCODE.REFUSED
    chaos = DNSRecord.question("version.bind", "TXT", "CH")
    out = handle(chaos.pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Reply)
    assert DNSRecord.parse(out.wire).header.rcode == RCODE.REFUSED
    reply = ask(zone, "files.lab.vnet", "ANY")
    assert rdata(reply) == ["10.77.0.20", "10.77.0.21"]
    # A response sent to us is never answered (no reflection loops).
    resp = DNSRecord.question("db.lab.vnet").reply()
    assert handle(resp.pack(), zone, ROUTES, allowed=True, tcp=False) is None
    two = DNSRecord.question("db.lab.vnet")
    two.add_question(*DNSRecord.question("web.lab.vnet").questions)
    out = handle(two.pack(), zone, ROUTES, allowed=True, tcp=False)
    assert isinstance(out, Reply)
    assert DNSRecord.parse(out.wire).header.rcode == RCODE.FORMERR


def test_no_domain_serves_reverse_only() -> None:
    z = build_zone(network(domain=None), {IP("10.77.0.50"): "alpha"}, 1)
    assert z is not None
    assert rdata(ask(z, "50.0.77.10.in-addr.arpa", "PTR")) == ["alpha."]
    assert rdata(ask(z, "alpha", "A")) == ["10.77.0.50"]


def test_reverse_zone_of_odd_prefixes() -> None:
    assert reverse_apex(ipaddress.IPv4Network("10.77.0.0/24")) == "0.77.10.in-addr.arpa."
    assert reverse_apex(ipaddress.IPv4Network("10.77.16.0/20")) == "77.10.in-addr.arpa."
    assert reverse_apex(ipaddress.IPv4Network("10.77.0.128/25")) == "0.77.10.in-addr.arpa."
    z = build_zone(network(address="10.77.16.1/20"), {IP("10.77.17.9"): "pc"}, 1)
    assert z is not None
    assert rdata(ask(z, "9.17.77.10.in-addr.arpa", "PTR")) == ["pc.lab.vnet."]
    assert ask(z, "9.32.77.10.in-addr.arpa", "PTR", routes=Routes(())).header.rcode == (
        RCODE.REFUSED  # outside the /20: not ours
    )


def test_disabled_or_no_ipv4_builds_nothing() -> None:
    assert build_zone(network(enabled=False), {}, 1) is None
    assert build_zone(Network(name="x", mode=Mode.BRIDGE), {}, 1) is None


def test_bad_record_values_name_the_record() -> None:
    bad = (DnsRecord("x", "A", "not-an-ip"), DnsRecord("y", "SRV", "1 2 http target"))
    with pytest.raises(ConfigError) as err:
        build_zone(network(bad), {}, 1)
    text = str(err.value)
    assert "dns.records[0]" in text
    assert "not-an-ip" in text
    assert "dns.records[1]" in text
    with pytest.raises(ConfigError, match="CNAME and other records"):
        build_zone(network((DnsRecord("c", "A", "10.77.0.9"), DnsRecord("c", "CNAME", "db"))),
                   {}, 1)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("Alpha", "alpha"), ("pc.corp.example", "pc"), ("bad_name", None), ("-x", None),
     ("", None), (None, None), ("a" * 64, None), ("a" * 63, "a" * 63)],
)
def test_lease_hostnames_are_sanitised(raw: str | None, clean: str | None) -> None:
    assert sanitize_hostname(raw) == clean
