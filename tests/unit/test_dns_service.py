"""The DNS service over loopback sockets: lease events, cache invalidation, real forwarding.

The network's gateway is a 127.x address (loopback only, no namespaces needed); upstreams are
tiny dnslib servers in threads on other 127.x addresses, stopped by the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord

from tests.conftest import wait_for
from vnet.events import EventBus, LeaseEvent, LeaseState
from vnet.model import (
    DhcpSpec,
    DnsForwarder,
    DnsRecord,
    DnsSpec,
    Ipv4Spec,
    Mode,
    Network,
    Reservation,
)
from vnet.serve import ServiceContext
from vnet.serve.dns import DnsService, create

GW = "127.77.0.1"


def free_port(host: str) -> int:
    """A port on ``host`` that neither a TCP nor a UDP socket holds (servers here bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((host, 0))
            port: int = t.getsockname()[1]
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no port free for both TCP and UDP on {host}")


class FakeUpstream:
    """A dnslib server on UDP+TCP: ``mode`` is ok, slow (0.3 s per UDP answer) or silent."""

    def __init__(self, host: str, mode: str) -> None:
        self.mode = mode
        self.queries: list[tuple[str, bool]] = []
        self.port = free_port(host)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, self.port))
        self.tcp.listen(8)
        self.address = f"{host}#{self.port}"
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def _answer(self, data: bytes, tcp: bool) -> bytes:
        q = DNSRecord.parse(data)
        self.queries.append((str(q.q.qname), tcp))
        r = q.reply()
        if str(q.q.qname).startswith("big."):
            r.add_answer(*[RR(q.q.qname, QTYPE.TXT, rdata=TXT("z" * 200), ttl=60)
                           for _ in range(10)])
            if not tcp:
                r.header.tc = 1
                r.rr = []
        elif str(q.q.qname).startswith("nx."):
            r.header.rcode = RCODE.NXDOMAIN
        else:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.80"), ttl=300))
        return bytes(r.pack())

    def _serve_udp(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(4096)
            except OSError:
                return
            if not data:
                return
            if self.mode == "slow":
                time.sleep(0.3)
            if self.mode != "silent":
                self.udp.sendto(self._answer(data, False), addr)
            else:
                self.queries.append(("(ignored)", False))

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                n = struct.unpack("!H", conn.recv(2))[0]
                reply = self._answer(conn.recv(n), True)
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(timeout=5)
        self.udp.close()
        self.tcp.close()


def network(forwarders: tuple[DnsForwarder, ...] = ()) -> Network:
    return Network(
        name="lab",
        mode=Mode.ISOLATED,
        ipv4=Ipv4Spec(
            ipaddress.IPv4Interface(f"{GW}/16"),
            DhcpSpec(reservations=(Reservation("52:54:00:00:00:05", ipaddress.IPv4Address(
                "127.77.0.5"), "db"),)),
        ),
        dns=DnsSpec(domain="lab.vnet", forwarders=forwarders,
                    records=(DnsRecord("big", "TXT", "x" * 700),)),
    )


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    ups = {"silent": FakeUpstream("127.77.1.2", "silent"), "ok": FakeUpstream("127.77.1.3", "ok")}
    try:
        yield ups
    finally:
        for up in ups.values():
            up.close()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


def start(net: Network, bus: EventBus, tmp_path: Path, **kw: object) -> DnsService:
    kw.setdefault("upstream_timeout", 0.3)
    svc = DnsService(net, ServiceContext(tmp_path, tmp_path, bus), port=free_port(GW),
                     **kw)  # type: ignore[arg-type]
    svc.start()
    return svc


CLIENT = "127.77.0.2"  # inside the network's subnet (127.0.0.1 is not: it gets REFUSED)


def query(svc: DnsService, name: str, qtype: str = "A", tcp: bool = False,
          src: str = CLIENT) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    wire = bytes(q.pack())
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(3)
        s.bind((src, 0))
        s.connect((GW, svc.port))
        if tcp:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            raw = s.recv(n, socket.MSG_WAITALL)
        else:
            s.send(wire)
            raw = s.recv(65535)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    return reply


def test_names_follow_lease_events_and_the_cache_follows_them(
    bus: EventBus, tmp_path: Path
) -> None:
    svc = start(network(), bus, tmp_path)
    try:
        for _ in range(2):
            assert query(svc, "pc.lab.vnet").header.rcode == RCODE.NXDOMAIN
        assert svc.stats()["cache_entries"] >= 1
        bus.publish(LeaseEvent("other", LeaseState.BOUND, "52:54:00:00:00:99",
                               ipaddress.IPv4Address("127.77.0.99"), "pc", time.time() + 60))
        bus.publish(LeaseEvent("lab", LeaseState.BOUND, "52:54:00:00:00:09",
                               ipaddress.IPv4Address("127.77.0.9"), "pc", time.time() + 60))
        assert wait_for(lambda: [str(r.rdata) for r in query(svc, "pc.lab.vnet").rr]
                        == ["127.77.0.9"])
        rebuilds = svc.stats()["zone_rebuilds"]
        bus.publish(LeaseEvent("lab", LeaseState.RENEWED, "52:54:00:00:00:09",
                               ipaddress.IPv4Address("127.77.0.9"), "pc", time.time() + 60))
        assert svc.stats()["zone_rebuilds"] == rebuilds  # nothing changed: cache kept
        # The client moves to a new address: the name follows it.
        bus.publish(LeaseEvent("lab", LeaseState.BOUND, "52:54:00:00:00:09",
                               ipaddress.IPv4Address("127.77.0.10"), "pc", time.time() + 60))
        assert wait_for(lambda: [str(r.rdata) for r in query(svc, "pc.lab.vnet").rr]
                        == ["127.77.0.10"])
        assert query(svc, "9.0.77.127.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
        bus.publish(LeaseEvent("lab", LeaseState.RELEASED, "52:54:00:00:00:09",
                               ipaddress.IPv4Address("127.77.0.10"), None, time.time()))
        assert wait_for(lambda: query(svc, "pc.lab.vnet").header.rcode == RCODE.NXDOMAIN)
        assert [str(r.rdata) for r in query(svc, "db.lab.vnet").rr] == ["127.77.0.5"]
        for tcp in (False, True):
            refused = query(svc, "db.lab.vnet", tcp=tcp, src="127.0.0.1")
            assert refused.header.rcode == RCODE.REFUSED
    finally:
        svc.stop()


def test_forwarding_skips_dead_and_silent_upstreams(
    upstreams: dict[str, FakeUpstream], bus: EventBus, tmp_path: Path
) -> None:
    dead = f"127.77.1.1#{free_port('127.77.1.1')}"  # nothing listens: ICMP unreachable
    fwd = (DnsForwarder(dead), DnsForwarder(upstreams["silent"].address),
           DnsForwarder(upstreams["ok"].address))
    svc = start(network(fwd), bus, tmp_path)
    try:
        t0 = time.monotonic()
        reply = query(svc, "www.example.com")
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.80"]
        assert reply.header.aa == 0
        assert reply.header.ra == 1
        assert time.monotonic() - t0 < 2.5
        assert upstreams["silent"].queries
        # Cached with its TTL: the upstream is not asked again.
        assert [str(r.rdata) for r in query(svc, "www.example.com").rr] == ["192.0.2.80"]
        assert len(upstreams["ok"].queries) == 1
        assert svc.stats()["relayed_hits"] == 1  # the same query bytes: served as stored
        time.sleep(1.1)  # TTLs count down in whole seconds
        aged = query(svc, "www.example.com")
        assert 0 < aged.rr[0].ttl < 300
        assert svc.stats()["relayed_hits"] == 2
        # Another client's form of the question (other ID, case) comes from the answer cache.
        assert [str(r.rdata) for r in query(svc, "WWW.example.com").rr] == ["192.0.2.80"]
        assert svc.stats()["forward_cache_hits"] == 1
        assert len(upstreams["ok"].queries) == 1
        assert query(svc, "nx.example.com").header.rcode == RCODE.NXDOMAIN
        # Over TCP too.
        assert [str(r.rdata) for r in query(svc, "tcp.example.com", tcp=True).rr] == [
            "192.0.2.80"
        ]
    finally:
        svc.stop()


def test_truncated_upstream_answer_is_fetched_over_tcp(
    upstreams: dict[str, FakeUpstream], bus: EventBus, tmp_path: Path
) -> None:
    svc = start(network((DnsForwarder(upstreams["ok"].address),)), bus, tmp_path)
    try:
        udp = query(svc, "big.example.com", "TXT")
        assert udp.header.tc == 1  # 2 KB does not fit the client's 512 bytes
        assert ("big.example.com.", True) in upstreams["ok"].queries
        full = query(svc, "big.example.com", "TXT", tcp=True)
        assert len(full.rr) == 10
        local = query(svc, "big.lab.vnet", "TXT", tcp=True)
        assert local.header.tc == 0
        assert local.rr
    finally:
        svc.stop()


def test_all_upstreams_failing_gives_servfail(
    upstreams: dict[str, FakeUpstream], bus: EventBus, tmp_path: Path
) -> None:
    svc = start(network((DnsForwarder(upstreams["silent"].address),)), bus, tmp_path)
    try:
        assert query(svc, "www.example.com").header.rcode == RCODE.SERVFAIL
    finally:
        svc.stop()


def test_create_reads_leases_and_respects_disabled(tmp_path: Path) -> None:
    from vnet.dhcp.lease import BOUND
    from vnet.leases import close_store, store_for

    ctx = ServiceContext(tmp_path, tmp_path, EventBus())
    try:
        store = store_for(tmp_path)
        store.write([
            ("lab", "127.77.0.40", "52:54:00:00:00:40", b"\x01", "seeded", time.time() + 600, BOUND),
            ("lab", "127.77.0.41", "52:54:00:00:00:41", b"\x01", "gone", time.time() - 1, BOUND),
        ])
        svc = create(network(), ctx)
        assert isinstance(svc, DnsService)
        assert "seeded.lab.vnet." in svc.zone.rrsets
        assert "gone.lab.vnet." not in svc.zone.rrsets
        off = Network(name="off", mode=Mode.ISOLATED, ipv4=network().ipv4,
                      dns=DnsSpec(enabled=False))
        assert create(off, ctx) is None
        assert create(Network(name="l2", mode=Mode.BRIDGE), ctx) is None
    finally:
        close_store(tmp_path)


def test_port_in_use_is_a_clear_error(bus: EventBus, tmp_path: Path) -> None:
    svc = start(network(), bus, tmp_path)
    try:
        twin = DnsService(network(), ServiceContext(tmp_path, tmp_path, bus), port=svc.port)
        with pytest.raises(Exception, match=r"cannot listen for DNS on 127\.77\.0\.1"):
            twin.start()
    finally:
        svc.stop()


def test_portable_loop_without_recvmmsg(bus: EventBus, tmp_path: Path) -> None:
    svc = start(network(), bus, tmp_path, batch=False)
    try:
        for _ in range(3):  # a miss, then hits from the reply cache
            assert [str(r.rdata) for r in query(svc, "db.lab.vnet").rr] == ["127.77.0.5"]
        assert query(svc, "db.lab.vnet", src="127.0.0.1").header.rcode == RCODE.REFUSED
        assert query(svc, "nx.lab.vnet").header.rcode == RCODE.NXDOMAIN
    finally:
        svc.stop()
    assert svc.stats()["hits"] == 2


def test_per_domain_forwarder_takes_only_its_domain(bus: EventBus, tmp_path: Path) -> None:
    default, corp = FakeUpstream("127.77.1.4", "ok"), FakeUpstream("127.77.1.5", "ok")
    fwd = (DnsForwarder(default.address), DnsForwarder(corp.address, "corp.example"))
    svc = start(network(fwd), bus, tmp_path)
    try:
        assert query(svc, "git.corp.example").rr
        assert query(svc, "www.example.com").rr
        assert [q for q, _ in corp.queries] == ["git.corp.example."]
        assert [q for q, _ in default.queries] == ["www.example.com."]
    finally:
        svc.stop()
        default.close()
        corp.close()


def test_leases_from_before_start_are_caught_up(bus: EventBus, tmp_path: Path) -> None:
    ip = ipaddress.IPv4Address
    rows = [(ip("127.77.0.40"), "52:54:00:00:00:40", "early"),
            (ip("127.77.0.41"), "52:54:00:00:00:41", "gone")]
    svc = DnsService(network(), ServiceContext(tmp_path, tmp_path, bus), port=free_port(GW),
                     load_leases=lambda: list(rows))
    assert "gone.lab.vnet." in svc.zone.rrsets
    # The DHCP server changes leases after we were built but before we subscribed.
    rows[1:] = [(ip("127.77.0.42"), "52:54:00:00:00:42", "late")]
    svc.start()
    try:
        assert wait_for(lambda: query(svc, "late.lab.vnet").rr)
        assert query(svc, "early.lab.vnet").rr
        assert query(svc, "gone.lab.vnet").header.rcode == RCODE.NXDOMAIN
    finally:
        svc.stop()


def test_clients_asking_the_same_forwarded_question_share_one_upstream_query(
    bus: EventBus, tmp_path: Path
) -> None:
    slow = FakeUpstream("127.77.1.6", "slow")
    svc = start(network((DnsForwarder(slow.address),)), bus, tmp_path, upstream_timeout=2.0)
    socks = []
    try:
        for i in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.settimeout(3)
            s.bind((f"127.77.0.{20 + i}", 0))
            q = DNSRecord.question("same.example.com")
            q.header.id = 100 + i
            s.sendto(q.pack(), (GW, svc.port))
        for i, s in enumerate(socks):
            reply = DNSRecord.parse(s.recv(4096))
            assert reply.header.id == 100 + i
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.80"]
        assert slow.queries == [("same.example.com.", False)]
        assert svc.stats()["coalesced"] == 4
    finally:
        for s in socks:
            s.close()
        svc.stop()
        slow.close()
