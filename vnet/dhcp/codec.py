"""DHCPv4 wire codec (RFC 2131 header, RFC 2132 options, RFC 3396 long options, option overload).

On the server's hot path: ``struct`` only, no per-option objects. ``decode`` turns bytes into a
``Packet`` or raises ``MalformedPacket`` (the transport counts and drops those); ``encode`` turns a
``Packet`` back into bytes. No sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = HEADER.size  # 236
MIN_LEN = HEADER_LEN + 4 + 1  # header, cookie, at least an end option
MAX_LEN = 65507
BOOTP_MIN_REPLY = 300  # some old clients drop shorter BOOTP/DHCP replies
FLAG_BROADCAST = 0x8000

OPT_PAD = 0
OPT_END = 255
OPT_OVERLOAD = 52

# DHCP message types (option 53)
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

MESSAGE_NAMES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

ZERO_IP = b"\0\0\0\0"


class MalformedPacket(ValueError):
    """The bytes are not a DHCP message we can act on; the message says why."""


@dataclass(slots=True)
class Packet:
    """One DHCP message. Addresses are 4 raw bytes; ``options`` maps code -> value bytes.

    Repeated instances of an option are concatenated (RFC 3396). ``options`` keeps the order in
    which codes first appeared, which ``encode`` preserves.
    """

    op: int = BOOTREPLY
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = ZERO_IP
    yiaddr: bytes = ZERO_IP
    siaddr: bytes = ZERO_IP
    giaddr: bytes = ZERO_IP
    chaddr: bytes = b"\0" * 16
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def msg_type(self) -> int | None:
        value = self.options.get(53)
        return value[0] if value and len(value) == 1 else None

    @property
    def mac(self) -> str:
        """The client hardware address as ``aa:bb:cc:dd:ee:ff`` (Ethernet only)."""
        return self.chaddr[:6].hex(":")


def _parse_options(data: bytes, start: int, end: int, into: dict[int, bytes]) -> None:
    """Parse the option area ``data[start:end]`` into ``into``; stop at the end option."""
    i = start
    while i < end:
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket(f"option {code} at byte {i} has no length byte")
        length = data[i + 1]
        value_end = i + 2 + length
        if value_end > end:
            raise MalformedPacket(
                f"option {code} at byte {i} claims {length} bytes, only {end - i - 2} remain"
            )
        value = data[i + 2 : value_end]
        old = into.get(code)
        into[code] = value if old is None else old + value
        i = value_end


def decode(data: bytes) -> Packet:
    """Bytes of a UDP payload -> Packet, or MalformedPacket naming what is wrong."""
    n = len(data)
    if n < MIN_LEN:
        raise MalformedPacket(f"{n} bytes is shorter than the {MIN_LEN}-byte minimum")
    if n > MAX_LEN:
        raise MalformedPacket(f"{n} bytes is longer than a UDP datagram")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     bootfile) = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise MalformedPacket(f"hardware address length {hlen} exceeds 16")
    if data[HEADER_LEN : HEADER_LEN + 4] != MAGIC:
        raise MalformedPacket("no DHCP magic cookie (plain BOOTP is not served)")
    options: dict[int, bytes] = {}
    _parse_options(data, HEADER_LEN + 4, n, options)
    overload = options.pop(OPT_OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"option overload (52) value {overload.hex()} is invalid")
        more: dict[int, bytes] = {}
        # RFC 2131: the file field is read before sname.
        if overload[0] & 1:
            _parse_options(bootfile, 0, len(bootfile), more)
            bootfile = b""
        if overload[0] & 2:
            _parse_options(sname, 0, len(sname), more)
            sname = b""
        if OPT_OVERLOAD in more:
            raise MalformedPacket("option overload (52) inside an overloaded field")
        for code, value in more.items():
            old = options.get(code)
            options[code] = value if old is None else old + value
    return Packet(
        op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
        sname.split(b"\0", 1)[0], bootfile.split(b"\0", 1)[0], options,
    )


def encode_options(options: dict[int, bytes]) -> bytes:
    """The option area (without cookie and end): long values split into 255-byte parts."""
    out = bytearray()
    for code, value in options.items():
        if len(value) <= 255:
            out += bytes((code, len(value)))
            out += value
        else:
            for i in range(0, len(value), 255):
                part = value[i : i + 255]
                out += bytes((code, len(part)))
                out += part
    return bytes(out)


def encode(packet: Packet, prebuilt: bytes = b"") -> bytes:
    """Packet -> bytes. ``prebuilt`` is an already-encoded option area appended after
    ``packet.options`` (the server caches the per-network part of its replies this way)."""
    sname = packet.sname
    bootfile = packet.file
    if len(sname) > 64:
        raise ValueError(f"sname is {len(sname)} bytes, the field holds 64")
    if len(bootfile) > 128:
        raise ValueError(f"file is {len(bootfile)} bytes, the field holds 128")
    head = HEADER.pack(
        packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs, packet.flags,
        packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr, packet.chaddr, sname, bootfile,
    )
    opts = encode_options(packet.options) if packet.options else b""
    body = head + MAGIC + opts + prebuilt + b"\xff"
    if len(body) < BOOTP_MIN_REPLY:
        body += b"\0" * (BOOTP_MIN_REPLY - len(body))
    return body
