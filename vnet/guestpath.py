"""One guest in or out, in O(1): its port's link and its set/map elements, nothing else.

The controller's fast path for attach and detach. A detached port is taken out of service at
once (down, off its bridge, renamed, nft elements gone) and deleted with others in one call
by the controller's reaper: the kernel takes ~16 ms per link delete, about as long per group.
The kernel is asked about the guest's port and its bridge only (one netlink round trip, not
a dump); the filter side is element changes computed from the compiler state the controller
keeps in memory (``Compiled``: port ids and profile chains; ``Loaded``: what the tables
hold), never a recompile. When a change needs more
(a new profile, port forwards to the guest, a ``$GUESTS`` set, a port that was unknown), it
returns None and the controller runs a full reconcile. Undone on failure, like every apply.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from vnet.errors import ConflictError
from vnet.host import netlink, nft
from vnet.model import Guest, Mode, Network
from vnet.plan import Action, Desired, Observed, PlanConflict, desired_port, plan
from vnet.policy import nftjson as nj
from vnet.policy.compile import Compiled, Port, guest_commands, new_port
from vnet.policy.loaded import Loaded

Timer = Callable[[float], None]  # called with the seconds nft took


@dataclass
class FilterMemory:
    """The compiler's state and what the tables hold, as the controller keeps them."""

    compiled: Compiled
    loaded: Loaded


def _filtered(net: Network) -> bool:
    return net.bridge is not None and net.mode != Mode.OPEN


def _simple(net: Network, guest: Guest, mem: FilterMemory | None) -> bool:
    """Whether this guest's elements can be computed without a recompile."""
    if not _filtered(net):
        return True
    if mem is None:
        return False
    if any(fw.guest == guest.name for fw in net.forwards):
        return False
    if net.name in mem.compiled.guest_sets and not (net.policies or guest.policies):
        return False
    unknown = mem.loaded.elems.get(("bridge", "unknown"), {})
    return all(e != guest.ifname for e in unknown.values())


def _link_actions(net: Network, guest: Guest) -> tuple[list[Action], Observed]:
    names = [guest.ifname]
    if net.bridge is not None:
        names.append(net.bridge.name)
    if net.uplink is not None:
        names.append(net.uplink.device)
    observed = netlink.observe_links(names)
    spec = desired_port(net, guest)
    try:
        actions = plan(Desired(links=(spec,)), observed, scope=[])
    except PlanConflict as err:
        raise ConflictError(str(err)) from err
    return actions, observed


def _load(commands: list[nj.Command], timer: Timer | None) -> None:
    began = time.monotonic()
    nft.update_elements(commands)
    if timer is not None:
        timer(time.monotonic() - began)


def attach(net: Network, guest: Guest, mem: FilterMemory | None,
           leased: list[ipaddress.IPv4Address], timer: Timer | None = None) -> list[str] | None:
    """Make ``guest``'s port and elements; the lines done, or None for "reconcile in full"."""
    if not _simple(net, guest, mem):
        return None
    port: Port | None = None
    commands: list[nj.Command] = []
    if _filtered(net):
        assert mem is not None
        if net.policies or guest.policies:
            port = new_port(mem.compiled, net, guest, leased)
            if port is None:
                return None  # its policy list has no chains yet
        commands = list(guest_commands(guest, port, add=True))
    actions, observed = _link_actions(net, guest)
    with contextlib.ExitStack() as undo:
        done = netlink.apply_actions(actions, undo.callback, observed)
        if commands:
            _load(commands, timer)
            done.append(f"add nftables elements of guest {guest.name} ({len(commands)} sets)")
        undo.pop_all()
    if mem is not None and commands:
        mem.loaded.apply(commands)
        if port is not None:
            mem.compiled.track(port)
    return done


def detach(net: Network, guest: Guest, mem: FilterMemory | None,
           timer: Timer | None = None) -> list[str] | None:
    """Remove ``guest``'s elements and port; the lines done, or None for "reconcile in full"."""
    if not _simple(net, guest, mem):
        return None
    commands: list[nj.Command] = []
    port: Port | None = None
    if _filtered(net):
        assert mem is not None
        port = mem.compiled.ports.get(guest.ifname)
        if port is not None:
            # the addresses bound now (leases moved them since the compile): from what is loaded
            bound = mem.loaded.elems.get(("inet", "ip4_port"), {}).values()
            ips = tuple(ipaddress.IPv4Address(e[0]) for e in bound
                        if isinstance(e, list) and e[1] == port.mark)
            port = replace(port, ips=ips)
        commands = list(guest_commands(guest, port, add=False))
    done: list[str] = []
    if commands:
        _load(commands, timer)
        done.append(f"delete nftables elements of guest {guest.name} ({len(commands)} sets)")
        assert mem is not None
        mem.loaded.apply(commands)
        if port is not None:
            mem.compiled.track(port, present=False)
    mine = [link for link in netlink.observe_links([guest.ifname]).links
            if link.owner_network == net.name]
    for link in mine:
        netlink.bury(link)  # deleted in a batch by the controller's reaper
        done.append(f"delete {link.kind} {link.ifname} (network {net.name})")
    return done
