"""TFTP wire codec and option negotiation: what a client sends is read the way RFC 1350/2347 say."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnet.tftp.options import Limits, Settings, negotiate
from vnet.tftp.packet import (
    Ack,
    Data,
    Error,
    MalformedPacket,
    Opcode,
    OptionAck,
    Request,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
    parse_packet,
    parse_request,
)


def test_rrq_with_options_is_decoded_case_insensitively() -> None:
    raw = b"\x00\x01pxelinux.0\x00OCTET\x00BLKSIZE\x001468\x00tsize\x000\x00"
    assert parse_request(raw) == Request(
        Opcode.RRQ, "pxelinux.0", "octet", (("blksize", "1468"), ("tsize", "0"))
    )


def test_first_occurrence_of_a_repeated_option_wins() -> None:
    raw = encode_request(Opcode.RRQ, "f", options=(("blksize", "1024"), ("blksize", "8")))
    assert parse_request(raw).options == (("blksize", "1024"),)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x00", "too short"),
        (b"\x00\x01file", "not NUL-terminated"),
        (b"\x00\x01file\x00", "lacks a filename or a mode"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "has no value"),
        (b"\x00\x03f\x00octet\x00", "not a request"),
    ],
)
def test_malformed_requests_are_named(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        parse_request(raw)


def test_non_ascii_file_names_map_to_bytes_on_disk() -> None:
    raw = b"\x00\x01caf\xe9\x00octet\x00"
    assert parse_request(raw).filename.encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize(
    ("packet", "decoded"),
    [
        (encode_data(7, b"abc"), Data(7, b"abc")),
        (encode_data(65536 + 3, b""), Data(3, b"")),
        (encode_ack(65535), Ack(65535)),
        (encode_error(1, "File not found"), Error(1, "File not found")),
        (encode_oack((("blksize", "1468"),)), OptionAck((("blksize", "1468"),))),
    ],
)
def test_round_trip(packet: bytes, decoded: object) -> None:
    assert parse_packet(packet) == decoded


@given(st.binary(max_size=600))
def test_any_datagram_decodes_or_raises_malformed(raw: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        parse_packet(raw)


def test_negotiation_grants_in_request_order_and_clamps() -> None:
    got = negotiate(
        (("tsize", "0"), ("blksize", "1468"), ("windowsize", "1000"), ("timeout", "3")),
        file_size=4242,
        limits=Limits(max_windowsize=64),
    )
    assert got.oack == (("tsize", "4242"), ("blksize", "1468"), ("windowsize", "64"),
                        ("timeout", "3"))
    assert got.settings == Settings(blksize=1468, windowsize=64, timeout=3.0)


def test_blksize_is_capped_and_the_window_fits_the_memory_cap() -> None:
    got = negotiate((("windowsize", "64"), ("blksize", "99999")), file_size=1,
                    limits=Limits(max_window_bytes=256 * 1024))
    assert got.oack == (("windowsize", "4"), ("blksize", "65464"))
    assert got.settings.windowsize == 4


@pytest.mark.parametrize(
    "option",
    [("blksize", "7"), ("blksize", "x"), ("timeout", "0"), ("timeout", "256"),
     ("windowsize", "0"), ("multicast", ""), ("tsize", "-1")],
)
def test_invalid_or_unknown_options_are_left_out(option: tuple[str, str]) -> None:
    got = negotiate((option,), file_size=10)
    assert got.oack == ()
    assert got.settings == Settings()


def test_tsize_is_not_offered_without_a_known_size() -> None:
    assert negotiate((("tsize", "0"),), file_size=None).oack == ()
