"""Link events -> controller intents: vnet's links are put back within a second of a change.

A thread reads the namespace's RTNLGRP_LINK notifications. A link vnet wants (a bridge, a
port, an uplink) that is deleted or changed, or any link joining one of vnet's bridges,
queues a ``check`` (coalesced by the controller's worker: a burst costs one plan); a link that
joins a vnet bridge without being a known port also queues ``port-appeared`` (adoption by MAC
of a TAP libvirt created, or an unknown port). A lost event (ENOBUFS) queues a full check.
Events are gathered for ``DEBOUNCE`` seconds first, so vnet's own applies cost one check.
Must not change the kernel: it only tells the controller.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

from vnet.controller import Controller
from vnet.host.rtnl import LinkEvents
from vnet.model import Model

log = logging.getLogger(__name__)

DEBOUNCE = 0.05


def _watched(model: Model) -> tuple[set[str], dict[str, str]]:
    """Names vnet wants, and bridge name -> network."""
    names: set[str] = set()
    bridges: dict[str, str] = {}
    for net in model.networks:
        if net.bridge is not None:
            names.add(net.bridge.name)
            bridges[net.bridge.name] = net.name
        if net.uplink is not None:
            names.add(net.uplink.device)
        names.update(g.ifname for g in net.guests)
    return names, bridges


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
            names, bridges = _watched(model)
            check = False
            appeared: list[tuple[str, str, str]] = []
            for kind, ifname, index, master, mac in events:
                self.counters["events"] += 1
                if kind == "new":
                    index_names[index] = ifname
                bridge = _name(index_names, master) if master else None
                if ifname in names:
                    check = True
                if bridge in bridges:
                    check = True
                    if kind == "new" and ifname not in names and mac and index not in told:
                        told.add(index)
                        appeared.append((ifname, mac, bridge))
                if kind == "del":
                    index_names.pop(index, None)
                    told.discard(index)
            for ifname, mac, bridge in dict.fromkeys(appeared):
                self.counters["appeared"] += 1
                self.c.post("port-appeared", ifname=ifname, mac=mac, bridge=bridge)
            if check:
                self.counters["checks"] += 1
                self.c.post("check")
