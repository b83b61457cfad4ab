"""TFTP wire format (RFC 1350, options from RFC 2347): decode and encode packets.

Pure byte handling: no sockets, no files. Decoding raises ``MalformedPacket`` (a ValueError)
naming what is wrong, so a transport can answer with an ERROR packet and carry on.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAX_BLOCK = 0xFFFF
_HDR = struct.Struct("!HH")


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347: option negotiation failed


class MalformedPacket(ValueError):
    """A datagram that is not a well-formed TFTP packet."""


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. ``filename`` is decoded with surrogateescape (any byte maps to a file name);
    ``mode`` is lower-cased; option names are lower-cased, first occurrence wins."""

    opcode: Opcode
    filename: str
    mode: str
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: tuple[tuple[str, str], ...]


Packet = Request | Data | Ack | Error | OptionAck


def _split_strings(body: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings; the last one must be terminated too."""
    if not body.endswith(b"\0"):
        raise MalformedPacket(f"{what}: last field is not NUL-terminated")
    return body[:-1].split(b"\0")


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as err:
        raise MalformedPacket(f"{what}: {raw[:32]!r} is not ASCII") from err


def parse_request(data: bytes) -> Request:
    """Decode an RRQ/WRQ datagram."""
    if len(data) < 2:
        raise MalformedPacket(f"request of {len(data)} bytes is too short")
    opcode = int.from_bytes(data[:2], "big")
    if opcode not in (Opcode.RRQ, Opcode.WRQ):
        raise MalformedPacket(f"opcode {opcode} is not a request (RRQ=1, WRQ=2)")
    fields = _split_strings(data[2:], "request")
    if len(fields) < 2:
        raise MalformedPacket("request lacks a filename or a mode")
    filename = fields[0].decode("utf-8", "surrogateescape")
    mode = _ascii(fields[1], "mode").lower()
    rest = fields[2:]
    if len(rest) % 2:
        raise MalformedPacket(f"option {rest[-1][:32]!r} has no value")
    options: dict[str, str] = {}
    for i in range(0, len(rest), 2):
        try:
            name = _ascii(rest[i], "option name").lower()
            value = _ascii(rest[i + 1], f"option {rest[i][:32]!r}")
        except MalformedPacket:
            continue  # RFC 2347: options a server does not understand are ignored
        options.setdefault(name, value)
    return Request(Opcode(opcode), filename, mode, tuple(options.items()))


def parse_packet(data: bytes) -> Packet:
    """Decode any TFTP datagram."""
    if len(data) < 2:
        raise MalformedPacket(f"datagram of {len(data)} bytes is too short for an opcode")
    opcode = int.from_bytes(data[:2], "big")
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return parse_request(data)
    if opcode in (Opcode.DATA, Opcode.ACK):
        if len(data) < 4:
            name = Opcode(opcode).name
            raise MalformedPacket(f"{name} of {len(data)} bytes lacks a block number")
        block = int.from_bytes(data[2:4], "big")
        if opcode == Opcode.ACK:
            return Ack(block)
        return Data(block, bytes(data[4:]))
    if opcode == Opcode.ERROR:
        if len(data) < 4:
            raise MalformedPacket("ERROR packet lacks an error code")
        message = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
        return Error(int.from_bytes(data[2:4], "big"), message)
    if opcode == Opcode.OACK:
        fields = _split_strings(data[2:], "OACK") if len(data) > 2 else []
        if len(fields) % 2:
            raise MalformedPacket("OACK has an option without a value")
        pairs = tuple(
            (_ascii(fields[i], "option name").lower(), _ascii(fields[i + 1], "option value"))
            for i in range(0, len(fields), 2)
        )
        return OptionAck(pairs)
    raise MalformedPacket(f"unknown opcode {opcode}")


def data_header(block: int) -> bytes:
    """The 4-byte header of DATA block ``block`` (taken modulo 2**16: rollover to 0)."""
    return _HDR.pack(Opcode.DATA, block & MAX_BLOCK)


def encode_data(block: int, payload: bytes) -> bytes:
    return data_header(block) + payload


def encode_ack(block: int) -> bytes:
    return _HDR.pack(Opcode.ACK, block & MAX_BLOCK)


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:500]
    return _HDR.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: tuple[tuple[str, str], ...]) -> bytes:
    body = b"".join(k.encode("ascii") + b"\0" + v.encode("ascii") + b"\0" for k, v in options)
    return Opcode.OACK.to_bytes(2, "big") + body


def encode_request(
    opcode: Opcode, filename: str, mode: str = "octet", options: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """An RRQ/WRQ datagram (used by tests and probes; the server never sends one)."""
    parts = [filename.encode("utf-8", "surrogateescape"), mode.encode("ascii")]
    for name, value in options:
        parts += [name.encode("ascii"), value.encode("ascii")]
    return opcode.to_bytes(2, "big") + b"".join(p + b"\0" for p in parts)
