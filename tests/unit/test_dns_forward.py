"""Forwarding logic without sockets: routes, retry order, TCP on truncation, the TTL cache."""

from __future__ import annotations

import itertools

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord

from vnet.dns.answer import relay
from vnet.dns.cache import ReplyCache, TimedReplyCache, ttl_fields
from vnet.dns.forward import (
    AnswerCache,
    Routes,
    Upstream,
    cache_key,
    cache_ttl,
    parse_upstream,
    resolve,
)
from vnet.model import DnsForwarder

Q = DNSRecord.question("www.example.com", "A")


def answer_to(query: bytes, ttl: int = 300, *, tc: bool = False, rcode: int = 0) -> bytes:
    req = DNSRecord.parse(query)
    resp = req.reply()
    resp.header.rcode = rcode
    if tc:
        resp.header.tc = 1
    elif rcode == 0:
        resp.add_answer(RR(req.q.qname, QTYPE.A, rdata=A("192.0.2.80"), ttl=ttl))
    return bytes(resp.pack())


class Upstreams:
    """Scripted upstream behaviour per server: what each (server, tcp) exchange returns."""

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, up: Upstream, wire: bytes, tcp: bool) -> bytes | None:
        self.calls.append((up.host, tcp))
        mode = self.script[up.host]
        if mode == "timeout":
            return None
        if mode == "servfail":
            return answer_to(wire, rcode=RCODE.SERVFAIL)
        if mode == "wrong-id":
            return b"\x00\x00" + answer_to(wire)[2:] if wire[:2] != b"\x00\x00" else None
        if mode == "garbage":
            return wire[:2] + b"\x81"
        if mode == "truncating":
            return answer_to(wire) if tcp else answer_to(wire, tc=True)
        return answer_to(wire)


IDS = itertools.count(1)


def ups(*hosts: str) -> list[Upstream]:
    return [Upstream(h) for h in hosts]


def test_first_good_upstream_answers() -> None:
    net = Upstreams({"a": "ok", "b": "ok"})
    resp = resolve(Q, ups("a", "b"), net, lambda: next(IDS))
    assert resp is not None
    assert str(resp.rr[0].rdata) == "192.0.2.80"
    assert net.calls == [("a", False)]


@pytest.mark.parametrize("bad", ["timeout", "servfail", "wrong-id", "garbage"])
def test_bad_upstream_moves_on_to_the_next(bad: str) -> None:
    net = Upstreams({"a": bad, "b": "ok"})
    resp = resolve(Q, ups("a", "b"), net, lambda: next(IDS))
    assert resp is not None
    assert resp.header.rcode == RCODE.NOERROR
    assert net.calls == [("a", False), ("b", False)]


def test_truncated_answer_is_asked_again_over_tcp() -> None:
    net = Upstreams({"a": "truncating"})
    resp = resolve(Q, ups("a"), net, lambda: next(IDS))
    assert resp is not None
    assert resp.header.tc == 0
    assert resp.rr
    assert net.calls == [("a", False), ("a", True)]


def test_all_failing_gives_servfail_to_the_client() -> None:
    net = Upstreams({"a": "timeout", "b": "servfail"})
    resp = resolve(Q, ups("a", "b"), net, lambda: next(IDS))
    assert resp is not None
    assert resp.header.rcode == RCODE.SERVFAIL
    assert resolve(Q, ups("a"), net, lambda: next(IDS)) is None
    client = DNSRecord.parse(relay(Q, None, 512))
    assert client.header.rcode == RCODE.SERVFAIL
    assert client.header.id == Q.header.id


def test_relay_keeps_the_clients_id_and_question_and_fits_its_size() -> None:
    up = DNSRecord.parse(answer_to(bytes(Q.pack())))
    up.header.id = 999
    for i in range(60):
        up.add_answer(RR("www.example.com", QTYPE.A, rdata=A(f"192.0.2.{i}"), ttl=60))
    client = DNSRecord.parse(relay(Q, up, 512))
    assert client.header.id == Q.header.id
    assert client.header.tc == 1
    assert client.header.aa == 0
    assert client.header.ra == 1
    full = DNSRecord.parse(relay(Q, up, 65535))
    assert len(full.rr) == 61


def test_routes_longest_domain_wins() -> None:
    routes = Routes((
        DnsForwarder("192.0.2.1"),
        DnsForwarder("192.0.2.2#5353", "corp.example"),
        DnsForwarder("192.0.2.3", "lab.corp.example"),
        DnsForwarder("fd00::53", "corp.example"),
    ))
    assert routes.upstreams_for("www.example.com.") == (Upstream("192.0.2.1"),)
    assert routes.upstreams_for("a.corp.example.") == (
        Upstream("192.0.2.2", 5353), Upstream("fd00::53"),
    )
    assert routes.upstreams_for("x.lab.corp.example.") == (Upstream("192.0.2.3"),)
    assert routes.upstreams_for("notcorp.example.") == (Upstream("192.0.2.1"),)
    assert Routes(()).upstreams_for("a.") == ()


@pytest.mark.parametrize("bad", ["10.0.0.1#0", "10.0.0.1#x", "host.example", "10.0.0.1#70000"])
def test_bad_forwarder_addresses(bad: str) -> None:
    with pytest.raises(ValueError, match="forwarder"):
        parse_upstream(bad)


def test_cache_honours_and_ages_ttls() -> None:
    cache = AnswerCache()
    resp = DNSRecord.parse(answer_to(bytes(Q.pack()), ttl=30))
    cache.put(cache_key(Q), resp, now=100.0)
    hit = cache.get(cache_key(DNSRecord.question("WWW.example.com", "A")), now=110.5)
    assert hit is not None
    assert hit.rr[0].ttl == 20
    assert cache.get(cache_key(Q), now=130.0) is None
    assert len(cache) == 0
    assert cache.get(cache_key(DNSRecord.question("www.example.com", "AAAA")), 100.0) is None


def test_negative_answers_cached_by_soa_minimum() -> None:
    resp = DNSRecord.parse(answer_to(bytes(Q.pack()), rcode=RCODE.NXDOMAIN))
    assert cache_ttl(resp, 86400) == 0  # no SOA: not cacheable (RFC 2308)
    resp.add_auth(RR("example.com", QTYPE.SOA, ttl=900,
                     rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 45))))
    assert cache_ttl(resp, 86400) == 45
    ok = DNSRecord.parse(answer_to(bytes(Q.pack()), ttl=10**6))
    assert cache_ttl(ok, 3600) == 3600
    assert cache_ttl(DNSRecord.parse(answer_to(bytes(Q.pack()), rcode=RCODE.SERVFAIL)), 60) == 0


def test_cache_is_bounded() -> None:
    cache = AnswerCache(max_entries=3)
    for i in range(5):
        q = DNSRecord.question(f"n{i}.example.com")
        cache.put(cache_key(q), DNSRecord.parse(answer_to(bytes(q.pack()))), now=0.0)
    assert len(cache) == 3
    assert cache.get(cache_key(DNSRecord.question("n4.example.com")), 1.0) is not None
    assert cache.get(cache_key(DNSRecord.question("n0.example.com")), 1.0) is None


def test_reply_cache_drops_answers_built_from_an_old_zone() -> None:
    cache = ReplyCache(max_entries=2)
    query, reply = bytes(Q.pack()), answer_to(bytes(Q.pack()))
    gen = cache.generation
    cache.store(query, reply, gen)
    assert cache.entries[query[2:]] == reply[2:]
    new = cache.invalidate()
    assert cache.entries == {}
    cache.store(query, reply, gen)  # built before the zone changed: must not come back
    assert cache.entries == {}
    cache.store(query, reply, new)
    for i in range(3):
        q = bytes(DNSRecord.question(f"n{i}.example").pack())
        cache.store(q, answer_to(q), new)
    assert len(cache.entries) <= 2
    assert cache.flushes >= 1
    small = ReplyCache(max_reply=100)
    small.store(query, reply + bytes(100), small.generation)  # too long for a send slot
    assert small.entries == {}


def test_relayed_replies_come_back_with_the_clients_id_and_aged_ttls() -> None:
    q = DNSRecord.question("www.example.com", "A")
    q.add_ar(EDNS0(udp_len=1232))
    resp = DNSRecord.parse(answer_to(bytes(q.pack()), ttl=300))
    resp.add_answer(RR("www.example.com", QTYPE.A, rdata=A("192.0.2.81"), ttl=30))
    resp.add_auth(RR("example.com", QTYPE.SOA, ttl=900,
                     rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 45))))
    resp.add_ar(EDNS0(udp_len=1232, flags="do"))
    wire = bytes(resp.pack())
    fields = ttl_fields(wire)
    assert fields is not None
    assert [ttl for _, ttl in fields] == [300, 30, 900]  # OPT's flags are not a TTL
    cache = TimedReplyCache()
    cache.store(wire, wire, now=100.0, ttl=30)
    again = DNSRecord.parse(wire)
    again.header.id = 4242
    hit = cache.get(bytes(again.pack()), now=110.7)
    assert hit is not None
    got = DNSRecord.parse(hit)
    assert got.header.id == 4242
    assert [rr.ttl for rr in got.rr + got.auth] == [290, 20, 890]
    assert got.ar[0].edns_do == 1
    assert cache.get(wire, now=130.0) is None
    assert cache.entries == {}


@pytest.mark.parametrize("wire", [b"", bytes(12) + b"\x05ab", bytes(4) + b"\x00\x01" + bytes(6)
                                  + b"\x40abc", bytes(4) + b"\x00\x00\x00\x01" + bytes(4)])
def test_ttl_fields_of_malformed_messages(wire: bytes) -> None:
    assert ttl_fields(wire) is None
    cache = TimedReplyCache()
    cache.store(bytes(12), wire, now=0.0, ttl=60)
    assert cache.entries == {}
