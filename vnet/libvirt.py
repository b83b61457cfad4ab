"""libvirt's qemu hook, daemon side: one call (argv + domain XML) -> controller intents.

The hook process (``vnet.hook``) only forwards what libvirt gave it; the daemon parses and
checks it here (``vnet.hookargs``: defusedxml, strict names) so a hostile input is refused
before anything is created. What each operation does, for the domain's vnet interfaces (those
named in vnet's metadata, or whose ``<target dev>`` is a declared guest's port):

- ``prepare begin`` / ``migrate begin`` (incoming, prepare follows) / ``reconnect begin``:
  attach each as a guest (origin libvirt) with its MAC, target dev and policies; the port is
  made before QEMU opens it (``managed='no'``), or adopted when libvirt made it already
  (reconnect: the guest runs). Idempotent, so a reconnect on a healthy host changes nothing.
- ``release end``: detach what prepare attached. Idempotent.
- anything else: nothing.

An interface of ``type='bridge'`` on a vnet bridge, whose TAP libvirt creates and enslaves
itself (``vnetN``, host-side MAC = the guest's with first octet 0xfe), is recorded at prepare
as a pending attachment; the daemon's link watch adopts that TAP the moment it joins the
bridge (``port-appeared``). On ``reconnect`` the live XML names it: it is attached directly.
Must not call libvirt (that deadlocks libvirtd).
"""

from __future__ import annotations

from typing import Any

from vnet.controller import BadRequest, Controller
from vnet.guests import find_port
from vnet.hookargs import Domain, Interface, parse_domain, parse_libvirt_argv


def _ports(controller: Controller, domain: Domain) -> list[tuple[Interface, str | None]]:
    """(interface, network) of every interface vnet serves: named in vnet's metadata, bridged to
    a vnet bridge, or (network None) whose target dev is a declared guest's port."""
    model, _ = controller.snapshot()
    bridges = {n.bridge.name: n.name for n in model.networks if n.bridge is not None}
    out: list[tuple[Interface, str | None]] = []
    for iface in domain.interfaces:
        if iface.vnet_network is not None:
            out.append((iface, iface.vnet_network))
        elif iface.type == "bridge" and iface.source_bridge in bridges:
            out.append((iface, bridges[iface.source_bridge]))
        elif iface.target_dev is not None and find_port(model, iface.target_dev) is not None:
            out.append((iface, None))
    return out


class LibvirtHooks:
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        argv, xml = body.get("argv"), body.get("xml", "")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise BadRequest("'argv' must be the hook's arguments (a list of strings)")
        if not isinstance(xml, str):
            raise BadRequest("'xml' must be the domain XML (a string)")
        call = parse_libvirt_argv(argv)
        if call.action == "noop":
            return {"action": "noop", "ports": []}
        domain = parse_domain(xml)
        if domain.name != call.guest:
            raise BadRequest(f"domain XML is for {domain.name!r}, the hook was called for "
                             f"{call.guest!r}")
        ports = _ports(self.c, domain)
        done: list[dict[str, Any]] = []
        if call.action == "release":
            for iface, network in ports:
                if network is None:
                    continue  # a declared guest's port stays (it is in the files)
                guest = iface.vnet_guest or domain.name
                done.append(self.c.submit("detach", network=network, guest=guest))
            return {"action": "release", "ports": done}
        for iface, network in ports:
            if iface.mac is None:
                raise BadRequest(f"domain XML: interface {iface.index} has no <mac address>")
            if iface.target_dev is None or (network is not None and iface.type == "bridge"
                                            and call.action in ("prepare", "migrate")):
                if network is None:
                    continue
                # libvirt creates and enslaves this TAP itself after prepare (vnetN, MAC with
                # first octet 0xfe): it is adopted by MAC the moment it joins the bridge.
                done.append(self.c.submit(
                    "attach", network=network, guest=iface.vnet_guest or domain.name,
                    mac=iface.mac, policies=list(iface.vnet_policies), origin="libvirt",
                    pending=True))
                continue
            if network is None:
                done.append(self.c.submit("port-up", ifname=iface.target_dev))
                continue
            done.append(self.c.submit(
                "attach", network=network, guest=iface.vnet_guest or domain.name,
                mac=iface.mac, ifname=iface.target_dev, policies=list(iface.vnet_policies),
                origin="libvirt"))
        return {"action": call.action, "ports": done}
