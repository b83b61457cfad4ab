"""Malformed queries never stop the DNS core: random bytes and mutated real queries."""

from __future__ import annotations

import ipaddress
import logging
import random

import pytest
from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.dns.answer import Forward, Reply, handle
from vnet.dns.forward import Routes
from vnet.dns.zone import build_zone
from vnet.model import DhcpSpec, DnsForwarder, DnsRecord, DnsSpec, Ipv4Spec, Mode, Network

NET = Network(
    name="lab",
    mode=Mode.NAT,
    ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.77.0.1/24"), DhcpSpec()),
    dns=DnsSpec(domain="lab.vnet", records=(
        DnsRecord("www", "CNAME", "db"), DnsRecord("db", "A", "10.77.0.5"),
        DnsRecord("big", "TXT", "y" * 700), DnsRecord("_s._tcp", "SRV", "1 1 1 db"),
    )),
)
ZONE = build_zone(NET, {ipaddress.IPv4Address("10.77.0.9"): "pc"}, 1)
assert ZONE is not None
ROUTES = Routes((DnsForwarder("192.0.2.1"),))


def seeds() -> list[bytes]:
    out = []
    for name, qtype in (("db.lab.vnet", "A"), ("www.lab.vnet", "A"), ("big.lab.vnet", "TXT"),
                        ("5.0.77.10.in-addr.arpa", "PTR"), ("example.com", "MX"),
                        ("_s._tcp.lab.vnet", "SRV")):
        q = DNSRecord.question(name, qtype)
        out.append(bytes(q.pack()))
        q.add_ar(EDNS0(udp_len=4096))
        out.append(bytes(q.pack()))
    return out


def check(data: bytes, tcp: bool = False) -> None:
    for allowed in (True, False):
        out = handle(data, ZONE, ROUTES, allowed=allowed, tcp=tcp)  # type: ignore[arg-type]
        assert out is None or isinstance(out, Reply | Forward)
        if isinstance(out, Reply):
            assert len(out.wire) >= 12
            assert out.wire[:2] == data[:2]  # the client's ID
            assert out.wire[2] & 0x80  # QR: it is a response
            if not tcp:
                assert len(out.wire) <= 1232


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(seeds()), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                          max_size=6), st.integers(0, 80))
def test_mutated_queries(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    check(bytes(data[: len(data) - cut] if cut < len(data) else data))


def test_seeded_mutator_many_rounds(caplog: pytest.LogCaptureFixture) -> None:
    """A fast deterministic mutator: bit flips, truncation, splices, inflated counts."""
    rng = random.Random(4)
    corpus = seeds()
    for _ in range(3000):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            if op == 0 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[rng.randrange(len(data) + 1):]
            elif op == 2:
                other = rng.choice(corpus)
                data[rng.randrange(len(data) + 1):] = other[rng.randrange(len(other)):]
            elif len(data) >= 12:
                data[4 + 2 * rng.randrange(4) + 1] = rng.randrange(256)
        check(bytes(data), tcp=rng.random() < 0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no internal errors
