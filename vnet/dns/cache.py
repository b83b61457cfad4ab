"""Ready reply bytes keyed by the query's wire form: the DNS fast path.

A query's bytes after its 2-byte ID (flags, counts, question, EDNS) fully determine our
authoritative reply, except for the ID. So the transport looks up ``data[2:]`` and sends
``data[:2] + entry``: one dict lookup and one concatenation per repeated question, no parsing.
Entries are only ever valid for one Zone: the server clears the cache whenever it swaps zones.
The transport binds ``entries.get`` once for its hot path (the dict is cleared, never replaced);
writers hold ``lock``.
"""

from __future__ import annotations

import struct
import threading


class ReplyCache:
    """Bounded map ``query[2:] -> reply[2:]``; when full it starts over (cheap, no LRU)."""

    def __init__(self, max_entries: int = 65536, max_reply: int = 2048) -> None:
        self.max_entries = max_entries
        self.max_reply = max_reply  # longer replies are not kept (the transport's slot size)
        self.entries: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.generation = 0
        self.flushes = 0

    def store(self, query: bytes, reply: bytes, generation: int) -> None:
        """Remember ``reply`` for ``query`` if it was built from the current generation's zone."""
        if len(query) < 12 or not 12 <= len(reply) <= self.max_reply:
            return
        with self.lock:
            if generation != self.generation:
                return
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
                self.flushes += 1
            self.entries[query[2:]] = reply[2:]

    def invalidate(self) -> int:
        """Forget every entry (the zone changed); returns the new generation."""
        with self.lock:
            self.generation += 1
            self.entries.clear()
            return self.generation


_COUNTS = struct.Struct("!4H")
_RR_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_OPT = 41


def _skip_name(wire: bytes, pos: int) -> int:
    while True:
        n = wire[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n & 0xC0:
            raise ValueError("bad label type")
        pos += n + 1


def ttl_fields(wire: bytes) -> list[tuple[int, int]] | None:
    """``(offset, ttl)`` of every record's TTL in a message (OPT excluded); None if malformed."""
    try:
        qd, an, ns, ar = _COUNTS.unpack_from(wire, 4)
        pos = 12
        for _ in range(qd):
            pos = _skip_name(wire, pos) + 4
        fields = []
        for _ in range(an + ns + ar):
            pos = _skip_name(wire, pos)
            rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(wire, pos)
            if rtype != _OPT:
                fields.append((pos + 4, ttl))
            pos += 10 + rdlen
    except (struct.error, IndexError, ValueError):
        return None
    return fields if pos == len(wire) else None


class TimedReplyCache:
    """Relayed (forwarded) replies by the query's wire form, kept for the answer's TTL.

    A hit is the stored reply with the query's ID and every TTL aged by the seconds since it
    was stored (patched in place: no parsing), so forwarded names that are asked again cost a
    dict lookup and a few struct writes instead of two dnslib round trips. Clock passed in.
    Entries are ``(stored, expires, reply, [(ttl_offset, ttl)])``; the transport's batch loop
    reads them directly, like ReplyCache's.
    """

    def __init__(self, max_entries: int = 4096, max_reply: int = 2048) -> None:
        self.max_entries = max_entries
        self.max_reply = max_reply
        self.entries: dict[bytes, tuple[float, float, bytes, list[tuple[int, int]]]] = {}
        self.lock = threading.Lock()

    def store(self, query: bytes, reply: bytes, now: float, ttl: int) -> None:
        ok = ttl > 0 and len(query) >= 12 and len(reply) <= self.max_reply
        fields = ttl_fields(reply) if ok else None
        if fields is None:
            return
        with self.lock:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[query[2:]] = (now, now + ttl, reply, fields)

    def get(self, query: bytes, now: float) -> bytes | None:
        entry = self.entries.get(query[2:])
        if entry is None:
            return None
        stored, expires, reply, fields = entry
        if now >= expires:
            with self.lock:
                if self.entries.get(query[2:]) is entry:
                    del self.entries[query[2:]]
            return None
        out = bytearray(reply)
        out[:2] = query[:2]
        age = int(now - stored)
        if age:
            for offset, ttl in fields:
                _TTL.pack_into(out, offset, max(0, ttl - age))
        return bytes(out)
