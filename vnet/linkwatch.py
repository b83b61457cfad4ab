"""Link events -> controller intents: vnet's links are put back within a second of a change.

A thread reads the namespace's RTNLGRP_LINK notifications. A link vnet wants (a bridge, a
port, an uplink) that is deleted, or whose last state in a burst differs from what vnet made
(its mark, master, MTU or admin state), queues a ``check`` (coalesced by the controller's
worker); vnet's own changes end as wanted and cost nothing. A link that joins a vnet bridge
without being a known port queues ``port-appeared`` (adoption by MAC of a TAP libvirt
created, or an unknown port to isolate) and a check. A lost event (ENOBUFS) queues a full
check. Events are gathered for ``DEBOUNCE`` seconds first.
Must not change the kernel: it only tells the controller.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

from vnet.controller import Controller
from vnet.host.netlink import link_state
from vnet.host.rtnl import LinkEvents, RawLink
from vnet.model import Guest, Model, Network
from vnet.plan import LinkSpec, desired_network, desired_port, drifted

log = logging.getLogger(__name__)

DEBOUNCE = 0.05


class _Wanted:
    """The links vnet wants, by name; a link's spec is computed only when an event names it
    (an index of names costs O(n) per model change, specs for all of them much more)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.bridges = {n.bridge.name: n.name for n in model.networks if n.bridge is not None}
        self._where: dict[str, tuple[Network, Guest | None]] = {}
        for net in model.networks:
            for g in net.guests:
                self._where[g.ifname] = (net, g)
            for name in self._network_links(net):
                self._where.setdefault(name, (net, None))

    @staticmethod
    def _network_links(net: Network) -> list[str]:
        names = [net.bridge.name] if net.bridge is not None else []
        if net.uplink is not None:
            names.append(net.uplink.device)
            if net.uplink.bond is not None:
                names.append(net.uplink.bond.name)
        return names

    def spec(self, ifname: str) -> LinkSpec | None:
        found = self._where.get(ifname)
        if found is None:
            return None
        net, guest = found
        if guest is not None:
            return desired_port(net, guest)
        spec = next((s for s in desired_network(net).links if s.ifname == ifname), None)
        if spec is None:  # a foreign uplink vnet only names
            return LinkSpec(ifname=ifname, kind="", network=net.name, role="uplink")
        return spec


def _name(index_names: dict[int, str], index: int) -> str | None:
    name = index_names.get(index)
    if name is None:
        try:
            name = index_names[index] = socket.if_indextoname(index)
        except OSError:
            return None
    return name


class LinkWatch:
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self._events = LinkEvents()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"events": 0, "checks": 0, "overflows": 0, "appeared": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vnet-links", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._events.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        index_names: dict[int, str] = {}
        told: set[int] = set()  # ports already reported as appeared (once per link)
        wanted: _Wanted | None = None
        while not self._stop.is_set():
            events_fd = self._events.fileno()
            ready, _, _ = select.select([events_fd, self._wake_r.fileno()], [], [])
            if self._stop.is_set():
                return
            if events_fd not in ready:
                continue
            self._stop.wait(DEBOUNCE)  # gather the burst (an apply makes many events)
            events = self._events.read()
            if events is None:
                self.counters["overflows"] += 1
                log.warning("link events were lost (ENOBUFS): full check")
                self.c.post("check")
                continue
            model, _ = self.c.snapshot()
            if wanted is None or wanted.model is not model:
                wanted = _Wanted(model)
            bridges = wanted.bridges
            check = False
            suspects: set[str] = set()
            last: dict[str, tuple[str, RawLink]] = {}
            appeared: list[tuple[str, str, str]] = []
            for kind, raw in events:
                self.counters["events"] += 1
                if kind == "new":
                    index_names[raw.index] = raw.ifname
                last[raw.ifname] = (kind, raw)
            for ifname, (kind, raw) in last.items():
                bridge = _name(index_names, raw.master) if raw.master else None
                spec = wanted.spec(ifname)
                if spec is not None:
                    # the last state of the burst: vnet's own changes end as wanted
                    if kind == "del" or drifted(spec, link_state(raw, index_names)):
                        suspects.add(ifname)
                elif bridge in bridges and kind == "new" and raw.index not in told:
                    told.add(raw.index)
                    check = True  # an unknown port: its isolation is element changes
                    if raw.mac:
                        appeared.append((ifname, raw.mac, bridge))
                if kind == "del":
                    index_names.pop(raw.index, None)
                    told.discard(raw.index)
            for ifname, mac, bridge in appeared:
                self.counters["appeared"] += 1
                self.c.post("port-appeared", ifname=ifname, mac=mac, bridge=bridge)
            if check:
                self.counters["checks"] += 1
                self.c.post("check")
            elif suspects:
                # the controller looks at these links again when it gets to them (they may be
                # gone from the model by then) and reconciles their networks only if needed
                self.counters["checks"] += 1
                self.c.post("check-links", names=sorted(suspects))
