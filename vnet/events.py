"""In-process publish/subscribe of lease events (DHCP -> DNS names, anti-spoofing sets).

Pure plumbing: no I/O. Subscribers are called synchronously in the publisher's thread, so they
must be quick and must not raise (an exception is logged by the bus and swallowed so one bad
subscriber cannot stop the DHCP server).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class LeaseState(enum.StrEnum):
    BOUND = "bound"
    RENEWED = "renewed"
    RELEASED = "released"
    EXPIRED = "expired"
    DECLINED = "declined"


@dataclass(frozen=True)
class LeaseEvent:
    network: str
    state: LeaseState
    mac: str
    ip: ipaddress.IPv4Address
    hostname: str | None
    expires: float  # epoch seconds


Subscriber = Callable[[LeaseEvent], None]


class EventBus:
    """Thread-safe fan-out of LeaseEvents to subscribers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        with self._lock:
            self._subscribers = (*self._subscribers, fn)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not fn)

        return unsubscribe

    def publish(self, event: LeaseEvent) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:
                log.exception("lease event subscriber %r failed on %s", fn, event)
