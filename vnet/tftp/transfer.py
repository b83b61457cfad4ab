"""The state machine of one TFTP read transfer (server side), lock-step or windowed.

Pure: the caller passes every received datagram and the current time in, and sends the
datagrams that come back; ``deadline`` says when to call ``on_timeout`` if nothing arrived.
File data comes from a sequential ``read(n) -> bytes`` callable, read once: the packets of the
unacknowledged window are kept for retransmission.

Block numbers are counted without bound inside and sent modulo 2**16, so a file of more than
65535 blocks rolls over to block 0 (what curl, atftp, tftp-hpa and iPXE expect). An OACK is
treated as block 0: the client's ACK 0 acknowledges it.

Sorcerer's Apprentice (RFC 1350 errata): in lock-step a duplicate ACK never triggers a resend,
only the timer does. In windowed mode (RFC 7440) the client ACKs the last block it received in
order; the window restarts after it. A repeated ACK of the block before the window restarts
the window once per window position, then only the timer resends.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from vnet.tftp.options import Settings
from vnet.tftp.packet import (
    MAX_BLOCK,
    Ack,
    Error,
    ErrorCode,
    MalformedPacket,
    data_header,
    encode_error,
    parse_packet,
)

Reader = Callable[[int], bytes]


class Outcome(enum.StrEnum):
    COMPLETE = "complete"
    CLIENT_ERROR = "client-error"  # the client sent an ERROR packet
    TIMED_OUT = "timed-out"
    PROTOCOL_ERROR = "protocol-error"  # the client sent something a reader must not send


class ReadTransfer:
    """Serve one file to one client. ``start`` first, then ``on_datagram``/``on_timeout``."""

    def __init__(self, read: Reader, settings: Settings, oack: bytes | None = None) -> None:
        self._read = read
        self._blksize = settings.blksize
        self._windowsize = settings.windowsize
        self._timeout = settings.timeout
        self._max_retries = settings.retries
        self._window: deque[bytes] = deque()
        self._base = 1  # absolute number of the first packet in _window
        self._ahead: deque[bytes] = deque()  # DATA packets built ahead of the window
        self._next = 1  # absolute number of the next DATA block to read
        self._eof = False  # the last (short) block has been read
        self._retries = 0
        self._dup_resent = False
        self.deadline = float("inf")
        self.outcome: Outcome | None = None
        self.detail = ""
        self.datagrams_sent = 0
        if oack is not None:
            self._window.append(oack)
            self._base = 0

    @property
    def blksize(self) -> int:
        return self._blksize

    @property
    def windowsize(self) -> int:
        return self._windowsize

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self, now: float) -> list[bytes]:
        """The first datagrams: the OACK, or the first window of DATA."""
        if not self._window:  # no OACK; with one, DATA waits for its ACK 0
            self._fill()
        return self._send_window(now)

    def on_datagram(self, datagram: bytes, now: float) -> list[bytes]:
        if self.outcome is not None:
            return []
        if len(datagram) >= 4 and datagram[1] == 4 and datagram[0] == 0:  # ACK: the hot path
            return self._on_ack((datagram[2] << 8) | datagram[3], now)
        try:
            packet = parse_packet(datagram)
        except MalformedPacket as err:
            return self._fail(Outcome.PROTOCOL_ERROR, str(err), ErrorCode.ILLEGAL_OPERATION)
        if isinstance(packet, Error):
            self.outcome = Outcome.CLIENT_ERROR
            self.detail = f"client error {packet.code}: {packet.message}"
            return []
        if isinstance(packet, Ack):  # pragma: no cover - handled by the fast path above
            return self._on_ack(packet.block, now)
        name = type(packet).__name__
        return self._fail(
            Outcome.PROTOCOL_ERROR, f"unexpected {name} during a read", ErrorCode.ILLEGAL_OPERATION
        )

    def on_timeout(self, now: float) -> list[bytes]:
        """Nothing arrived before ``deadline``: resend the window, or give up."""
        if self.outcome is not None or now < self.deadline:
            return []
        self._retries += 1
        if self._retries > self._max_retries:
            self.outcome = Outcome.TIMED_OUT
            self.detail = f"no ACK after {self._max_retries} retransmissions"
            self.deadline = float("inf")
            return []
        return self._send_window(now)

    def _on_ack(self, wire_block: int, now: float) -> list[bytes]:
        # Which outstanding packet does this ACK name? 0 = the one before the window.
        delta = (wire_block - (self._base - 1)) & MAX_BLOCK
        if delta == 0:
            if self._windowsize > 1 and not self._dup_resent and self._window:
                self._dup_resent = True
                return self._send_window(now)
            return []
        window = self._window
        if delta >= len(window):
            if delta > len(window):
                return []  # an ACK for something not sent (or long ago): ignore
            window.clear()  # the usual case: the whole window arrived
        else:
            for _ in range(delta):
                window.popleft()
        self._base += delta
        self._retries = 0
        self._dup_resent = False
        self._fill()
        if not self._window:
            self.outcome = Outcome.COMPLETE
            self.deadline = float("inf")
            return []
        return self._send_window(now)

    def prepare(self) -> None:
        """Read and build the next window's packets now, while the client has the current one.

        Optional (the transfer reads on demand otherwise): a transport calls it after sending,
        so the file read is off the path from an ACK to the next DATA.
        """
        ahead, read, blksize = self._ahead, self._read, self._blksize
        while len(ahead) < self._windowsize and not self._eof:
            payload = read(blksize)
            ahead.append(data_header(self._next) + payload)
            self._next += 1
            if len(payload) < blksize:
                self._eof = True

    def _fill(self) -> None:
        window, ahead = self._window, self._ahead
        while len(window) < self._windowsize:
            if not ahead:
                self.prepare()
                if not ahead:
                    return
            window.append(ahead.popleft())

    def _send_window(self, now: float) -> list[bytes]:
        self.deadline = now + self._timeout
        out = list(self._window)
        self.datagrams_sent += len(out)
        return out

    def _fail(self, outcome: Outcome, detail: str, code: ErrorCode) -> list[bytes]:
        self.outcome = outcome
        self.detail = detail
        self.deadline = float("inf")
        return [encode_error(code, detail)]


class NetasciiReader:
    """Wrap a sequential binary reader: LF -> CR LF, CR -> CR NUL (RFC 764 netascii)."""

    def __init__(self, read: Reader, chunk: int = 65536) -> None:
        self._read = read
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self._eof = False

    def __call__(self, n: int) -> bytes:
        parts: list[bytes] = []
        want = n
        while want > 0:
            if self._pos >= len(self._buf):
                if self._eof:
                    break
                raw = self._read(self._chunk)
                if not raw:
                    self._eof = True
                    break
                self._buf = raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
                self._pos = 0
            piece = self._buf[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return b"".join(parts)
