"""Desired guests = the files' guests + the attachments made at run time. Pure.

``attach_problems`` says why an attachment cannot join a model (each message names the field
and the value); ``with_attachments`` returns the model with every attachment as a guest of its
network. Planning, compiling and the services then see one list of guests, whatever made them.
Must not read files, the kernel or the attachment store: callers pass what they hold.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from vnet.model import (
    Attachment,
    Guest,
    Mode,
    Model,
    Network,
    Origin,
    PortKind,
    check_ifname,
    normalize_mac,
)
from vnet.naming import default_port_ifname

GUEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def make_attachment(network: Network, guest: str, mac: str, *, ifname: str | None = None,
                    port: str = "tap", policies: Sequence[str] = (), netns: str | None = None,
                    origin: str = "api", pending: bool = False) -> Attachment:
    """An Attachment from request fields, normalised; ValueError naming the bad field.

    ``pending``: the port's name is not known yet (libvirt names its TAP when it creates it);
    the attachment waits for a TAP with the guest's MAC to appear on the network's bridge.
    """
    if not GUEST_NAME.match(guest):
        raise ValueError(f"guest name {guest[:64]!r}: use letters, digits, '-', '_', '.' "
                         "(max 63, starting with a letter or digit)")
    try:
        kind = PortKind(port)
    except ValueError as err:
        raise ValueError(f"port {port!r} is not one of tap, macvtap, veth") from err
    if origin not in (Origin.API, Origin.QEMU, Origin.LIBVIRT):
        raise ValueError(f"origin {origin!r} is not one of api, qemu, libvirt")
    where = Origin(origin)
    if ifname is None and not pending:
        ifname = default_port_ifname(network.name, guest)
    if ifname is not None:
        check_ifname(ifname)
    if netns is not None and ("/" in netns or netns in ("", ".", "..") or len(netns) > 255):
        raise ValueError(f"netns {netns!r} is not a network namespace name")
    if kind == PortKind.VETH and netns is None:
        raise ValueError("port veth needs --netns (the guest's network namespace)")
    for name in policies:
        if not isinstance(name, str) or not name:
            raise ValueError(f"policy {name!r} is not a policy name")
    return Attachment(network=network.name, guest=guest, mac=normalize_mac(mac), ifname=ifname,
                      port=kind, policies=tuple(policies), netns=netns, origin=where)


def attach_problems(model: Model, att: Attachment, known_policies: Iterable[str] | None = None,
                    attachments: Iterable[Attachment] = ()) -> list[str]:
    """Why ``att`` cannot be added to ``model`` (already holding ``attachments``); [] if it can.

    The same guest attached again with the same port is not a problem (``add`` is idempotent).
    """
    net = model.network(att.network)
    if net is None:
        defined = ", ".join(n.name for n in model.networks) or "none"
        return [f"no network named {att.network!r} is defined (defined: {defined})"]
    out: list[str] = []
    if att.port == PortKind.MACVTAP:
        if net.uplink is None:
            out.append(f"network {net.name!r} has no uplink: port macvtap needs one")
    elif net.bridge is None:
        out.append(f"network {net.name!r} (mode {net.mode}) has no bridge: use --port macvtap")
    if net.mode == Mode.MACVTAP and att.port != PortKind.MACVTAP:
        out.append(f"network {net.name!r} is mode macvtap: guests need --port macvtap")
    others = [a for a in attachments if (a.network, a.guest) != (att.network, att.guest)]
    same = next((a for a in attachments if (a.network, a.guest) == (att.network, att.guest)), None)
    if same is not None and same != att:
        out.append(f"guest {att.guest!r} is already attached to network {net.name!r} with port "
                   f"{same.ifname!r} (MAC {same.mac}); delete it first to change it")
    declared = net.guest(att.guest)
    if declared is not None:
        out.append(f"guest {att.guest!r} is declared in {net.source}: it needs no attachment")
    for g in net.guests:
        if g.mac == att.mac and g.name != att.guest:
            out.append(f"MAC {att.mac} is already used by guest {g.name!r} of network {net.name!r}")
    for a in others:
        if a.network == att.network and a.mac == att.mac:
            out.append(f"MAC {att.mac} is already used by guest {a.guest!r} of network {net.name!r}")
    taken = {n.bridge.name: f"the bridge of network {n.name!r}" for n in model.networks if n.bridge}
    for n in model.networks:
        if n.uplink is not None:
            taken[n.uplink.device] = f"the uplink of network {n.name!r}"
        for g in n.guests:
            if (n.name, g.name) != (att.network, att.guest):
                taken[g.ifname] = f"the port of guest {g.name!r} of network {n.name!r}"
    for a in others:
        if a.ifname is not None:
            taken[a.ifname] = f"the port of guest {a.guest!r} of network {a.network!r}"
    if att.ifname is not None and att.ifname in taken:
        out.append(f"port ifname {att.ifname!r} is already {taken[att.ifname]}")
    if known_policies is not None:
        known = set(known_policies)
        for name in att.policies:
            if name not in known:
                out.append(f"policy {name!r} is not defined (known: {', '.join(sorted(known))})")
    return out


def _reserved(net: Network) -> dict[str, ipaddress.IPv4Address]:
    if net.ipv4 is None or net.ipv4.dhcp is None:
        return {}
    return {r.mac: r.ip for r in net.ipv4.dhcp.reservations if r.mac is not None}


@functools.lru_cache(maxsize=1 << 16)
def _guest(att: Attachment, reserved: ipaddress.IPv4Address | None) -> Guest:
    assert att.ifname is not None
    return Guest(name=att.guest, mac=att.mac, ifname=att.ifname, port=att.port,
                 policies=att.policies, netns=att.netns, ip=reserved, origin=att.origin)


def with_attachments(model: Model, attachments: Iterable[Attachment]) -> Model:
    """``model`` with each attachment as a guest of its network (unknown networks: skipped).

    Called on every guest change with every attachment: the Guest of an unchanged attachment
    is the same object each time (memoised), and reservations are looked up by MAC."""
    extra: dict[str, list[Attachment]] = {}
    for att in attachments:
        extra.setdefault(att.network, []).append(att)
    if not extra:
        return model
    networks = []
    for net in model.networks:
        atts = sorted(extra.get(net.name, ()), key=lambda a: a.guest)
        if not atts:
            networks.append(net)
            continue
        declared = {g.name for g in net.guests}
        reserved = _reserved(net)
        added = tuple(_guest(a, reserved.get(a.mac)) for a in atts
                      if a.guest not in declared and a.ifname is not None)
        networks.append(replace(net, guests=net.guests + added) if added else net)
    return replace(model, networks=tuple(networks))


def find_port(model: Model, ifname: str) -> tuple[Network, Guest] | None:
    """The network and guest whose port is named ``ifname``."""
    for net in model.networks:
        for g in net.guests:
            if g.ifname == ifname:
                return net, g
    return None


def host_side_macs(mac: str) -> tuple[str, str]:
    """The MACs a guest's TAP may show on the host: the guest's own, or libvirt's (first octet
    0xfe, so the bridge never takes the guest's address as its own)."""
    return mac, "fe" + mac[2:]


def pending_for(attachments: Iterable[Attachment], network: str, mac: str) -> Attachment | None:
    """The pending attachment of ``network`` whose guest owns a TAP with host-side ``mac``."""
    for a in attachments:
        if a.network == network and a.ifname is None and mac in host_side_macs(a.mac):
            return a
    return None
