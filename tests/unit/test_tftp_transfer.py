"""The read-transfer state machine, driven with an injected clock and simulated clients."""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.tftp.options import Settings
from vnet.tftp.packet import Ack, Data, Error, encode_ack, encode_error, parse_packet
from vnet.tftp.transfer import NetasciiReader, Outcome, ReadTransfer


def data_of(datagrams: list[bytes]) -> list[tuple[int, bytes]]:
    out = []
    for raw in datagrams:
        packet = parse_packet(raw)
        assert isinstance(packet, Data), packet
        out.append((packet.block, packet.payload))
    return out


def transfer(content: bytes, blksize: int = 8, windowsize: int = 1, retries: int = 5,
             oack: bytes | None = None) -> ReadTransfer:
    return ReadTransfer(io.BytesIO(content).read, Settings(blksize, windowsize, 1.0, retries), oack)


def test_lock_step_sends_blocks_until_a_short_one() -> None:
    t = transfer(b"0123456789abcdefXY")
    assert data_of(t.start(0.0)) == [(1, b"01234567")]
    assert data_of(t.on_datagram(encode_ack(1), 0.1)) == [(2, b"89abcdef")]
    assert data_of(t.on_datagram(encode_ack(2), 0.2)) == [(3, b"XY")]
    assert t.on_datagram(encode_ack(3), 0.3) == []
    assert t.outcome is Outcome.COMPLETE


def test_file_of_whole_blocks_ends_with_an_empty_block() -> None:
    t = transfer(b"01234567")
    t.start(0.0)
    assert data_of(t.on_datagram(encode_ack(1), 0.1)) == [(2, b"")]
    t.on_datagram(encode_ack(2), 0.2)
    assert t.outcome is Outcome.COMPLETE


def test_empty_file_is_one_empty_block() -> None:
    t = transfer(b"")
    assert data_of(t.start(0.0)) == [(1, b"")]
    t.on_datagram(encode_ack(1), 0.0)
    assert t.finished


def test_oack_is_acknowledged_by_ack_zero_before_any_data() -> None:
    t = transfer(b"abc", windowsize=4, oack=b"\x00\x06blksize\x008\x00")
    assert t.start(0.0) == [b"\x00\x06blksize\x008\x00"]
    assert data_of(t.on_datagram(encode_ack(0), 0.1)) == [(1, b"abc")]


def test_duplicate_ack_in_lock_step_does_not_resend() -> None:
    """Sorcerer's Apprentice: only the timer resends."""
    t = transfer(b"x" * 40)
    t.start(0.0)
    t.on_datagram(encode_ack(1), 0.1)
    assert t.on_datagram(encode_ack(1), 0.2) == []


def test_timeout_resends_then_gives_up() -> None:
    t = transfer(b"x" * 40, retries=2)
    first = t.start(0.0)
    assert t.deadline == 1.0
    assert t.on_timeout(0.5) == []  # not due yet
    assert t.on_timeout(1.0) == first
    assert t.on_timeout(2.0) == first
    assert t.on_timeout(3.0) == []
    assert t.outcome is Outcome.TIMED_OUT


def test_progress_resets_the_retry_count() -> None:
    t = transfer(b"x" * 40, retries=1)
    t.start(0.0)
    t.on_timeout(1.0)
    t.on_datagram(encode_ack(1), 1.5)
    assert data_of(t.on_timeout(2.5)) == [(2, b"x" * 8)]
    assert not t.finished


def test_window_is_sent_whole_and_slides_on_the_last_ack() -> None:
    t = transfer(bytes(range(40)), windowsize=3)
    assert [b for b, _ in data_of(t.start(0.0))] == [1, 2, 3]
    assert [b for b, _ in data_of(t.on_datagram(encode_ack(3), 0.1))] == [4, 5, 6]


def test_partial_ack_restarts_the_window_after_the_acked_block() -> None:
    t = transfer(bytes(range(80)), windowsize=4)
    t.start(0.0)
    assert [b for b, _ in data_of(t.on_datagram(encode_ack(2), 0.1))] == [3, 4, 5, 6]


def test_repeated_ack_before_the_window_resends_it_once() -> None:
    t = transfer(bytes(range(80)), windowsize=4)
    t.start(0.0)
    t.on_datagram(encode_ack(4), 0.1)  # window 5..8 out
    assert [b for b, _ in data_of(t.on_datagram(encode_ack(4), 0.2))] == [5, 6, 7, 8]
    assert t.on_datagram(encode_ack(4), 0.3) == []


def test_ack_for_an_unsent_block_is_ignored() -> None:
    t = transfer(bytes(range(80)), windowsize=2)
    t.start(0.0)
    assert t.on_datagram(encode_ack(9), 0.1) == []
    assert not t.finished


def test_block_numbers_roll_over_to_zero() -> None:
    blocks = 65536 + 5
    t = transfer(b"z" * (blocks * 8 - 3))
    sent = data_of(t.start(0.0))
    for i in itertools.count(1):
        if t.finished:
            break
        (block, _), = sent
        assert block == i % 65536
        sent = data_of(t.on_datagram(encode_ack(block), 0.0)) if i < blocks else []
        if i == blocks:
            t.on_datagram(encode_ack(block), 0.0)
    assert t.outcome is Outcome.COMPLETE


def test_client_error_ends_the_transfer_silently() -> None:
    t = transfer(b"x" * 40)
    t.start(0.0)
    assert t.on_datagram(encode_error(8, "no thanks"), 0.1) == []
    assert t.outcome is Outcome.CLIENT_ERROR
    assert "no thanks" in t.detail


@pytest.mark.parametrize("junk", [b"\x00", b"\x00\x03\x00\x01data", b"\x00\x09??"])
def test_junk_gets_an_illegal_operation_error(junk: bytes) -> None:
    t = transfer(b"x" * 40)
    t.start(0.0)
    (reply,) = t.on_datagram(junk, 0.1)
    packet = parse_packet(reply)
    assert isinstance(packet, Error)
    assert packet.code == 4
    assert t.outcome is Outcome.PROTOCOL_ERROR


def run_lossy(content: bytes, blksize: int, windowsize: int, drops: list[bool]) -> bytes:
    """An RFC 7440 client over a channel that drops datagrams as ``drops`` says, then none."""
    t = transfer(content, blksize, windowsize, retries=1000)
    lost = itertools.chain(drops, itertools.repeat(False))
    now = 0.0
    received = bytearray()
    expected = 1
    in_window = 0
    outbox = t.start(now)
    for _ in range(100_000):
        if t.finished:
            break
        acks: list[int] = []
        gap_acked = False
        for raw in outbox:
            if next(lost):
                continue
            packet = parse_packet(raw)
            assert isinstance(packet, Data)
            if packet.block == expected % 65536:
                received += packet.payload
                expected += 1
                in_window += 1
                if in_window == windowsize or len(packet.payload) < blksize:
                    acks.append(expected - 1)
                    in_window = 0
            elif not gap_acked:
                acks.append(expected - 1)
                gap_acked = True
                in_window = 0
        outbox = []
        for ack in acks:
            if not next(lost):
                outbox += t.on_datagram(encode_ack(ack), now)
        if not outbox:
            now = t.deadline
            outbox = t.on_timeout(now)
            in_window = 0
    assert t.outcome is Outcome.COMPLETE
    return bytes(received)


@settings(max_examples=60, deadline=None)
@given(
    content=st.binary(max_size=300),
    blksize=st.integers(8, 24),
    windowsize=st.integers(1, 8),
    drops=st.lists(st.booleans(), max_size=40),
)
def test_lossy_channel_still_delivers_the_file_exactly(
    content: bytes, blksize: int, windowsize: int, drops: list[bool]
) -> None:
    assert run_lossy(content, blksize, windowsize, drops) == content


def test_netascii_translates_line_ends_across_chunks() -> None:
    read = NetasciiReader(io.BytesIO(b"a\nb\rc\r\n" * 3).read, chunk=4)
    out = b"".join(iter(lambda: read(5), b""))
    assert out == b"a\r\nb\r\0c\r\0\r\n" * 3


def test_ack_parsed_by_the_fast_path_matches_the_codec() -> None:
    assert parse_packet(encode_ack(513)) == Ack(513)


def test_reading_ahead_does_not_change_what_is_sent() -> None:
    content = bytes(range(256)) * 3
    eager, lazy = transfer(content, windowsize=4), transfer(content, windowsize=4)
    sent_eager, sent_lazy = eager.start(0.0), lazy.start(0.0)
    for _ in range(100):
        if lazy.finished:
            break
        assert sent_eager == sent_lazy
        eager.prepare()
        eager.prepare()  # idempotent: at most one window ahead
        last = data_of(sent_lazy)[-1][0]
        sent_eager = eager.on_datagram(encode_ack(last), 0.1)
        sent_lazy = lazy.on_datagram(encode_ack(last), 0.1)
    assert eager.outcome is lazy.outcome is Outcome.COMPLETE
