"""The TFTP transport on loopback: concurrent transfers, per-client limits, retransmission,
refusals from a fresh port, prompt stop. Real UDP sockets, an in-test client, no root needed."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from vnet.events import EventBus
from vnet.model import Ipv4Spec, Mode, Network, TftpSpec
from vnet.serve import ServiceContext
from vnet.serve.tftp import TftpService, create
from vnet.tftp.options import Limits
from vnet.tftp.packet import (
    Data,
    Error,
    Opcode,
    OptionAck,
    encode_ack,
    encode_error,
    encode_request,
    parse_packet,
)

CONTENT = os.urandom(100_000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "file.bin").write_bytes(CONTENT)
    (tmp_path / "small.txt").write_bytes(b"hello\n")
    return tmp_path


@pytest.fixture
def service(root: Path) -> Iterator[TftpService]:
    svc = TftpService("127.0.0.1", root, port=0, max_per_client=8,
                      limits=Limits(default_timeout=0.2, retries=3))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


class Client:
    """A minimal TFTP reader bound to a chosen loopback address."""

    def __init__(self, service: TftpService, source: str = "127.0.0.1") -> None:
        self.server = (service.address, service.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3)
        self.sock.bind((source, 0))
        self.peer: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def request(self, name: str, opcode: Opcode = Opcode.RRQ,
                options: tuple[tuple[str, str], ...] = ()) -> object:
        self.sock.sendto(encode_request(opcode, name, options=options), self.server)
        return self.receive()

    def receive(self) -> object:
        raw, self.peer = self.sock.recvfrom(70000)
        return parse_packet(raw)

    def send(self, raw: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(raw, self.peer)

    def finish(self, first: object, blksize: int = 512) -> bytes:
        """Lock-step read to the end, starting from the first DATA already received."""
        out = bytearray()
        packet = first
        while True:
            assert isinstance(packet, Data), packet
            out += packet.payload
            self.send(encode_ack(packet.block))
            if len(packet.payload) < blksize:
                return bytes(out)
            packet = self.receive()


def test_lock_step_read_from_a_new_port(service: TftpService) -> None:
    client = Client(service)
    try:
        first = client.request("file.bin")
        assert client.peer is not None
        assert client.peer[1] != service.port  # the transfer has its own TID
        assert client.finish(first) == CONTENT
    finally:
        client.close()
    assert wait_for(lambda: service.stats().get("complete") == 1)


def test_options_are_acknowledged_then_honoured(service: TftpService) -> None:
    client = Client(service)
    try:
        oack = client.request("file.bin", options=(("blksize", "1468"), ("tsize", "0")))
        assert oack == OptionAck((("blksize", "1468"), ("tsize", str(len(CONTENT)))))
        client.send(encode_ack(0))
        assert client.finish(client.receive(), blksize=1468) == CONTENT
    finally:
        client.close()


def test_a_lost_ack_gets_the_block_retransmitted(service: TftpService) -> None:
    client = Client(service)
    try:
        first = client.request("file.bin")
        assert client.receive() == first  # we never ACKed: the 0.2 s timer resent it
        assert client.finish(first) == CONTENT
    finally:
        client.close()


def test_a_silent_client_is_given_up(service: TftpService) -> None:
    client = Client(service)
    try:
        client.request("small.txt")
        assert wait_for(lambda: service.stats().get("timed-out") == 1, timeout=5)
        assert service.stats()["active"] == 0
    finally:
        client.close()


@pytest.mark.parametrize(
    ("name", "opcode", "code"),
    [
        ("../etc/passwd", Opcode.RRQ, 2),
        ("/etc/passwd", Opcode.RRQ, 2),
        ("missing", Opcode.RRQ, 1),
        ("new.bin", Opcode.WRQ, 2),
    ],
)
def test_refusals_are_error_packets(service: TftpService, name: str, opcode: Opcode,
                                    code: int) -> None:
    client = Client(service)
    try:
        reply = client.request(name, opcode)
        assert isinstance(reply, Error)
        assert reply.code == code
    finally:
        client.close()
    assert service.stats()["refused"] == 1


def test_hundred_concurrent_transfers(service: TftpService) -> None:
    # One loopback source address per client: the per-client limit is per address.
    clients = [Client(service, f"127.0.1.{i}") for i in range(1, 101)]
    try:
        firsts = [c.request("file.bin") for c in clients]
        assert service.stats()["active"] == 100
        # Advance them all in lock-step, round robin; duplicates (retransmissions) are skipped.
        data = [bytearray() for _ in clients]
        expected = [1] * len(clients)
        pending = dict(enumerate(firsts))
        while pending:
            for i, packet in list(pending.items()):
                assert isinstance(packet, Data)
                if packet.block != expected[i]:
                    continue
                data[i] += packet.payload
                expected[i] += 1
                clients[i].send(encode_ack(packet.block))
                if len(packet.payload) < 512:
                    del pending[i]
            for i in pending:
                pending[i] = clients[i].receive()
        assert all(hashlib.sha256(d).digest() == hashlib.sha256(CONTENT).digest() for d in data)
    finally:
        for c in clients:
            c.close()
    assert wait_for(lambda: service.stats()["active"] == 0)
    assert service.stats()["complete"] == 100


def test_per_client_transfer_limit(service: TftpService) -> None:
    clients = [Client(service, "127.0.2.1") for _ in range(9)]
    try:
        for c in clients[:8]:
            assert isinstance(c.request("file.bin"), Data)
        refused = clients[8].request("file.bin")
        assert isinstance(refused, Error)
        assert "too many transfers" in refused.message
        other = Client(service, "127.0.2.2")  # another client is not affected
        assert isinstance(other.request("small.txt"), Data)
        other.close()
        clients[0].send(encode_error(0, "bye"))  # one ends: room for one more
        assert wait_for(lambda: service.stats()["active"] == 8)
        assert isinstance(clients[8].request("file.bin"), Data)
    finally:
        for c in clients:
            c.close()


def test_stop_ends_active_transfers_and_frees_the_port(root: Path) -> None:
    svc = TftpService("127.0.0.1", root, port=0)
    svc.start()
    client = Client(svc)
    try:
        # The transfer now waits up to 30 s for ACK 0; stop() must not wait for that.
        assert isinstance(client.request("file.bin", options=(("timeout", "30"),)), OptionAck)
        started = time.monotonic()
        svc.stop()
        assert time.monotonic() - started < 5.0
        assert svc.stats()["active"] == 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", svc.port))
        probe.close()
    finally:
        client.close()


def test_malformed_request_does_not_stop_the_server(service: TftpService) -> None:
    client = Client(service)
    try:
        client.sock.sendto(b"\x00\x01no-terminator", client.server)
        reply = client.receive()
        assert isinstance(reply, Error)
        assert reply.code == 4
        assert isinstance(client.request("small.txt"), Data)
    finally:
        client.close()


def test_factory_serves_the_network_root_on_its_gateway(root: Path) -> None:
    ctx = ServiceContext(root, root, EventBus())
    net = Network("lab", Mode.ISOLATED, ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.9.0.1/24")))
    assert create(net, ctx) is None
    with_tftp = Network("lab", Mode.ISOLATED, ipv4=net.ipv4,
                        tftp=TftpSpec(str(root), max_transfers_per_client=3))
    svc = create(with_tftp, ctx)
    assert isinstance(svc, TftpService)
    assert (svc.address, svc.port, svc.root, svc.max_per_client) == ("10.9.0.1", 69, root, 3)


def windowed_read(client: Client, blksize: int, windowsize: int, drop: set[int]) -> bytes:
    """An RFC 7440 reader: ACK each full window (or the last block); the blocks in ``drop``
    are ignored the first time they arrive, and the gap is ACKed as the RFC says."""
    oack = client.request("file.bin", options=(("blksize", str(blksize)),
                                               ("windowsize", str(windowsize))))
    assert oack == OptionAck((("blksize", str(blksize)), ("windowsize", str(windowsize))))
    client.send(encode_ack(0))
    out = bytearray()
    expected, in_window, gap_acked = 1, 0, False
    while True:
        packet = client.receive()
        assert isinstance(packet, Data)
        if packet.block in drop:
            drop.discard(packet.block)
            continue
        if packet.block != expected % 65536:
            if not gap_acked:  # a gap: say what arrived in order, the server restarts there
                client.send(encode_ack(expected - 1))
                gap_acked, in_window = True, 0
            continue
        gap_acked = False
        out += packet.payload
        expected += 1
        in_window += 1
        last = len(packet.payload) < blksize
        if in_window == windowsize or last:
            client.send(encode_ack(packet.block))
            in_window = 0
        if last:
            return bytes(out)


@pytest.mark.parametrize(("blksize", "windowsize"), [(1468, 16), (512, 64), (9000, 4)])
def test_windowed_read_arrives_intact(service: TftpService, blksize: int,
                                      windowsize: int) -> None:
    client = Client(service)
    try:
        assert windowed_read(client, blksize, windowsize, drop=set()) == CONTENT
    finally:
        client.close()


def test_windowed_read_recovers_from_lost_blocks(service: TftpService) -> None:
    client = Client(service)
    try:
        assert windowed_read(client, 1468, 16, drop={5, 17, 40, 68}) == CONTENT
    finally:
        client.close()


def test_a_repeated_request_does_not_start_a_second_transfer(service: TftpService) -> None:
    client = Client(service)
    try:
        first = client.request("file.bin")
        client.sock.sendto(encode_request(Opcode.RRQ, "file.bin"), client.server)  # impatient
        assert client.finish(first) == CONTENT
    finally:
        client.close()
    assert wait_for(lambda: service.stats()["active"] == 0)
    assert service.stats()["started"] == 1
