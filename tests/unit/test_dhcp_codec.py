"""The DHCP wire codec: cross-checked against scapy's DHCP layer, hostile input, fuzzing."""

from __future__ import annotations

import contextlib
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP as ScapyIP
from scapy.layers.inet import UDP

from tests.unit.dhcp_helpers import IP, network, request
from vnet.dhcp import codec
from vnet.dhcp import options as o
from vnet.dhcp.server import DhcpCore, ServerConfig

MAC = "52:54:00:12:34:56"


def scapy_discover(**extra: object) -> bytes:
    pkt = BOOTP(chaddr=bytes.fromhex("525400123456"), xid=0xABCDEF01, flags=0x8000) / DHCP(
        options=[("message-type", "discover"), *extra.items(), "end"]
    )
    return bytes(pkt)


def test_decodes_scapy_built_request() -> None:
    raw = scapy_discover(
        requested_addr="10.77.0.150", hostname=b"vm1", param_req_list=[1, 3, 6, 121],
        client_id=b"\x01\x52\x54\x00\x12\x34\x56",
    )
    pkt = codec.decode(raw)
    assert (pkt.op, pkt.xid, pkt.flags, pkt.mac) == (1, 0xABCDEF01, 0x8000, MAC)
    assert pkt.msg_type == codec.DISCOVER
    assert pkt.options[o.REQUESTED_IP] == IP("10.77.0.150").packed
    assert pkt.options[o.HOSTNAME] == b"vm1"
    assert pkt.options[o.PARAMETER_REQUEST_LIST] == bytes([1, 3, 6, 121])


def test_server_reply_parses_identically_in_scapy() -> None:
    config = ServerConfig.from_network(network())
    assert config is not None
    core = DhcpCore(config)
    out = core.handle(codec.decode(scapy_discover(param_req_list=[1, 3, 6, 15, 26, 28, 42, 121])),
                      1000.0)
    assert out is not None
    assert out.reply is not None
    theirs = BOOTP(out.reply)
    assert theirs.op == 2
    assert theirs.xid == 0xABCDEF01
    assert theirs.yiaddr == "10.77.0.100"
    assert theirs.chaddr[:6] == bytes.fromhex("525400123456")
    opts = dict(x for x in theirs[DHCP].options if isinstance(x, tuple))
    assert opts["message-type"] == 2
    assert opts["server_id"] == "10.77.0.1"
    assert opts["lease_time"] == 600
    assert opts["renewal_time"] == 300
    assert opts["rebinding_time"] == 525
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "10.77.0.1"
    assert opts["name_server"] == "10.77.0.1"
    assert opts["domain"] == b"lab.test"
    assert opts["broadcast_address"] == "10.77.0.255"
    assert opts["interface-mtu"] == 1400
    assert opts["NTP_server"] == "10.77.0.1"
    assert opts["classless_static_routes"] == ["192.168.50.0/24:10.77.0.1", "0.0.0.0/0:10.77.0.1"]
    # Byte for byte: scapy re-encoding what it parsed gives our bytes back.
    assert bytes(theirs)[: len(out.reply)] == out.reply


def test_long_option_is_split_and_joined_rfc3396() -> None:
    value = bytes(range(256)) * 2
    raw = codec.encode(codec.Packet(options={53: b"\x05", 43: value}))
    assert raw.count(bytes((43, 255))) == 2
    assert codec.decode(raw).options[43] == value


def test_overloaded_file_and_sname_fields_are_read() -> None:
    pkt = codec.Packet(op=codec.BOOTREQUEST, options={53: b"\x01", 52: b"\x03"})
    raw = bytearray(codec.encode(pkt))
    raw[108:114] = bytes((12, 4)) + b"host"  # file field: hostname
    raw[108 + 6] = 255
    raw[44:50] = bytes((50, 4)) + IP("10.0.0.9").packed  # sname field: requested ip
    raw[50] = 255
    out = codec.decode(bytes(raw))
    assert out.options[12] == b"host"
    assert out.options[50] == IP("10.0.0.9").packed
    assert (out.file, out.sname) == (b"", b"")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than"),
        (bytes(241), "op 0"),
        (bytes([1, 1, 17]) + bytes(240), "hardware address length 17"),
        (bytes([1, 1, 6]) + bytes(233) + b"\0\0\0\0\xff", "no DHCP magic cookie"),
        (bytes([1, 1, 6]) + bytes(233) + codec.MAGIC + bytes((53, 9, 1)), "claims 9 bytes"),
        (bytes([1, 1, 6]) + bytes(233) + codec.MAGIC + bytes((53,)), "no length byte"),
        (bytes([1, 1, 6]) + bytes(233) + codec.MAGIC + bytes((52, 1, 7, 255)), "overload"),
        (bytes(70000), "longer than a UDP datagram"),
    ],
    ids=["empty", "bad-op", "hlen", "cookie", "overrun", "no-length", "bad-overload", "huge"],
)
def test_malformed_packets_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(codec.MalformedPacket, match=why):
        codec.decode(raw)


def test_overload_inside_overloaded_field_is_refused() -> None:
    raw = bytearray(codec.encode(codec.Packet(op=1, options={53: b"\x01", 52: b"\x01"})))
    raw[108:111] = bytes((52, 1, 1))
    with pytest.raises(codec.MalformedPacket, match="inside an overloaded field"):
        codec.decode(bytes(raw))


def _seeds() -> list[bytes]:
    seeds = [
        codec.encode(request(t, MAC, prl=bytes([1, 3, 6, 121]), hostname=b"x",
                             client_id=b"\x01abcdef", requested=IP("10.77.0.120").packed))
        for t in (codec.DISCOVER, codec.REQUEST, codec.RELEASE, codec.DECLINE, codec.INFORM)
    ]
    seeds.append(scapy_discover(param_req_list=[1, 3], vendor_class_id=b"PXEClient"))
    return seeds


def test_mutation_fuzz_100k_packets_never_crashes_decoder_or_core() -> None:
    """Seeded mutation fuzzing: every input decodes or raises MalformedPacket, and whatever
    decodes is answered (or ignored) by the core without an exception."""
    rng = random.Random(20261126)
    seeds = _seeds()
    config = ServerConfig.from_network(network(rate_limit=0))
    assert config is not None
    core = DhcpCore(config)
    decoded = malformed = 0
    start = time.monotonic()
    for i in range(100_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            kind = rng.random()
            pos = rng.randrange(len(data)) if data else 0
            if kind < 0.5:
                if data:
                    data[pos] = rng.randrange(256)
            elif kind < 0.65:
                del data[pos:]
            elif kind < 0.8:
                data[pos:pos] = rng.randbytes(rng.randint(1, 40))
            elif kind < 0.9 and len(data) > 240:
                # A plausible option header with a lying length.
                at = rng.randrange(240, len(data))
                data[at : at + 2] = bytes((rng.choice((12, 50, 52, 53, 55, 61, 82)),
                                           rng.randrange(256)))
            elif data:
                del data[pos : pos + rng.randint(1, 20)]
        try:
            pkt = codec.decode(bytes(data))
        except codec.MalformedPacket:
            malformed += 1
            continue
        decoded += 1
        core.handle(pkt, 1000.0 + i / 1000)
    assert decoded + malformed == 100_000
    assert decoded > 10_000
    assert malformed > 10_000
    assert time.monotonic() - start < 60


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(codec.MalformedPacket):
        codec.decode(data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(1, 254).filter(lambda c: c != 52), st.binary(max_size=600), max_size=12
    ),
    st.integers(0, 2**32 - 1),
)
def test_encode_decode_roundtrip(options: dict[int, bytes], xid: int) -> None:
    pkt = codec.Packet(op=codec.BOOTREQUEST, xid=xid, options=options)
    assert codec.decode(codec.encode(pkt)).options == options


def test_scapy_udp_framing_carries_our_reply() -> None:
    raw = codec.encode(codec.Packet(options={53: b"\x02"}))
    frame = ScapyIP(bytes(ScapyIP(dst="10.77.0.100") / UDP(sport=67, dport=68) / raw))
    assert bytes(frame[UDP].payload) == raw
