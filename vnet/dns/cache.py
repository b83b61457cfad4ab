"""Ready reply bytes keyed by the query's wire form: the DNS fast path.

A query's bytes after its 2-byte ID (flags, counts, question, EDNS) fully determine our
authoritative reply, except for the ID. So the transport looks up ``data[2:]`` and sends
``data[:2] + entry``: one dict lookup and one concatenation per repeated question, no parsing.
Entries are only ever valid for one Zone: the server clears the cache whenever it swaps zones.
The transport binds ``entries.get`` once for its hot path (the dict is cleared, never replaced);
writers hold ``lock``.
"""

from __future__ import annotations

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
