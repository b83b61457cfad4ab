"""The filter service: keeps the ``$IP`` bindings of filtered guests in step with DHCP leases.

It subscribes to lease events and turns each into a few set/map element changes (bindings in
both vnet tables, routed-inbound dispatch, port-forward targets) applied as one small
transaction: no recompile, no table replacement. A guest's reserved address stays bound; a new
lease replaces the guest's previous leased address; release or expiry removes it. Reads only
vnet's own ``port_mark`` map (port ids are assigned at apply time).

Runs in the daemon's thread that publishes the event, so it is quick and never raises: a
failure is logged and counted (``stats()['errors']``).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vnet.errors import VnetError
from vnet.events import EventBus, LeaseEvent, LeaseState
from vnet.host import nft
from vnet.leases import read_leases
from vnet.model import Network
from vnet.policy.compile import Leases, Port, binding_commands, forward_commands
from vnet.serve import Service, ServiceContext

log = logging.getLogger(__name__)

IPv4 = ipaddress.IPv4Address
MARKS_REFRESH = 1.0  # seconds between re-reads of the port ids for a port not found
Apply = Callable[[Sequence[object]], None]


def current_leases(state_dir: Path) -> Leases:
    """Active leases from the lease database, in the shape ``compile_ruleset`` takes."""
    out: dict[tuple[str, str], set[IPv4]] = {}
    for record in read_leases(state_dir / "leases.db", active_only=True):
        out.setdefault((record.network, record.mac), set()).add(record.ip)
    return out


class FilterService:
    """Lease events of one network -> ``$IP`` binding element changes."""

    name = "filter"

    def __init__(
        self,
        network: Network,
        events: EventBus,
        *,
        initial: Mapping[str, set[IPv4]] | None = None,
        apply: Apply = nft.update_elements,
        marks: Callable[[], Mapping[str, int]] = nft.port_marks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.network = network
        self.events = events
        self._apply = apply
        self._marks_source = marks
        self._marks: Mapping[str, int] = {}
        self._clock = clock
        self._marks_read = -MARKS_REFRESH
        self._leased: dict[str, set[IPv4]] = {m: set(v) for m, v in (initial or {}).items()}
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None
        self._stats = {"events": 0, "updates": 0, "errors": 0, "ignored": 0}
        self._guests = {g.mac: g for g in network.guests if network.policies or g.policies}

    def start(self) -> None:
        try:
            self._marks_read = self._clock()
            self._marks = self._marks_source()
        except VnetError as err:  # tables not readable yet: retried on the first event
            log.warning("filter %s: cannot read port ids: %s", self.network.name, err)
        self._unsubscribe = self.events.subscribe(self.on_event)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def update_guests(self, network: Network) -> None:
        """The network's guests changed (an attachment came or went): follow them.

        A new guest's port id is read from vnet's map on its first lease event. A guest that
        left takes its leased bindings with it (its port's elements were removed by apply).
        """
        with self._lock:
            self.network = network
            self._guests = {g.mac: g for g in network.guests if network.policies or g.policies}
            for mac in [m for m in self._leased if m not in self._guests]:
                del self._leased[mac]
            self._marks = {}

    def _port(self, mac: str) -> Port | None:
        guest = self._guests.get(mac)
        if guest is None:
            return None
        mark = self._marks.get(guest.ifname)
        now = self._clock()
        if mark is None and (not self._marks or now - self._marks_read >= MARKS_REFRESH):
            # applied after we started: read our map again (at most once a second)
            self._marks_read = now
            self._marks = self._marks_source()
            mark = self._marks.get(guest.ifname)
        if mark is None:
            return None
        return Port(self.network.name, guest.name, guest.ifname, guest.mac, mark, ("", ""), ())

    def _commands(self, mac: str, after: set[IPv4]) -> list[object]:
        """Element changes moving guest ``mac``'s leased addresses to ``after``."""
        before = self._leased.get(mac, set())
        port = self._port(mac)
        if after == before or port is None:
            return []
        guest = self._guests[mac]
        reserved = {guest.ip} if guest.ip is not None else set()
        commands: list[object] = list(binding_commands(port, before | reserved, after | reserved))
        old_target = min(before | reserved, default=None)
        new_target = min(after | reserved, default=None)
        commands += forward_commands(self.network, guest.name, old_target, new_target)
        return commands

    def on_event(self, event: LeaseEvent) -> None:
        if event.network != self.network.name:
            return
        with self._lock:
            self._stats["events"] += 1
            try:
                self._handle(event)
            except (VnetError, OSError, ValueError) as err:
                self._stats["errors"] += 1
                log.warning("filter %s: cannot update bindings for %s: %s",
                            self.network.name, event.mac, err)

    def _handle(self, event: LeaseEvent) -> None:
        port = self._port(event.mac)
        if port is None:
            self._stats["ignored"] += 1
            return
        bound = event.state in (LeaseState.BOUND, LeaseState.RENEWED)
        before = self._leased.get(event.mac, set())
        changes = {event.mac: {event.ip} if bound else before - {event.ip}}
        if bound:  # the address may still be bound to a guest whose lease we saw end silently
            for mac, ips in self._leased.items():
                if mac != event.mac and event.ip in ips:
                    changes[mac] = ips - {event.ip}
        commands: list[object] = []
        for mac, after in sorted(changes.items(), key=lambda kv: kv[0] != event.mac):
            commands[:0] = self._commands(mac, after)  # releases first, then the new binding
        if not commands:
            return
        self._apply(commands)
        self._leased.update(changes)
        self._stats["updates"] += 1


def create(network: Network, ctx: ServiceContext) -> Service | None:
    """The filter service of ``network``: only when some guest there has policies."""
    if network.bridge is None or not (network.policies or any(g.policies for g in network.guests)):
        return None
    initial: dict[str, set[IPv4]] = {}
    try:
        leases = current_leases(ctx.state_dir)
    except VnetError as err:
        log.warning("filter %s: cannot read leases: %s", network.name, err)
        leases = {}
    for (net, mac), ips in leases.items():
        if net == network.name:
            initial[mac] = set(ips)
    if ctx.nft_elements is not None:
        return FilterService(network, ctx.events, initial=initial, apply=ctx.nft_elements)
    return FilterService(network, ctx.events, initial=initial)
