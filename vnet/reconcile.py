"""Make the host match the model: capability check -> observe -> plan -> apply, transactionally.

The imperative shell around ``vnet.plan``: used by ``vnet plan/apply/down/status`` and the daemon.
A failure part-way undoes every step that apply had made (in reverse order) and re-raises, so
no half-built network is left. Must not be called from inside a running asyncio event loop
(pyroute2's synchronous API refuses); the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from vnet.errors import CapabilityError, ConflictError, HostError
from vnet.host import caps, netlink
from vnet.model import Model, Network, PortKind
from vnet.plan import Action, Observed, PlanConflict, desired_model, plan, plan_down, restrict


def required_features(net: Network) -> list[tuple[str, str]]:
    """(feature, definition key) pairs the network needs from the kernel."""
    out: list[tuple[str, str]] = []
    if net.uplink is not None:
        if net.uplink.bond is not None:
            out.append(("bond", "uplink.bond"))
        if net.uplink.vlan is not None:
            out.append(("vlan", "uplink.vlan"))
    if net.bridge is not None and net.bridge.vlan_filtering:
        out.append(("bridge-vlan-filtering", "bridge.vlan-filtering"))
    kinds = {g.port for g in net.guests}
    if PortKind.TAP in kinds:
        out.append(("tun", "guests[].port: tap"))
    if PortKind.MACVTAP in kinds:
        out.append(("macvtap", "guests[].port: macvtap"))
    if PortKind.VETH in kinds:
        out.append(("veth", "guests[].port: veth"))
    return out


def check_capabilities(networks: Sequence[Network]) -> None:
    missing = [
        f"network {net.name!r} ({net.source}): {key} needs {caps.FEATURES[feature]}, "
        "which this kernel does not provide"
        for net in networks
        for feature, key in required_features(net)
        if not caps.has_feature(feature)
    ]
    if missing:
        raise CapabilityError("refusing to change anything:\n  " + "\n  ".join(missing))


def select(model: Model, names: Sequence[str] | None) -> list[Network]:
    if not names:
        return list(model.networks)
    out = []
    for name in names:
        net = model.network(name)
        if net is None:
            known = ", ".join(n.name for n in model.networks) or "none"
            raise HostError(f"no network named {name!r} is defined (defined: {known})")
        out.append(net)
    return out


@dataclass(frozen=True)
class Planned:
    actions: list[Action]
    observed: Observed


def plan_model(model: Model, names: Sequence[str] | None = None) -> Planned:
    nets = select(model, names)
    desired = desired_model(nets)
    if names:
        desired = restrict(desired, [n.name for n in nets])
    with_vlans = any(n.bridge is not None and n.bridge.vlan_filtering for n in nets)
    observed = netlink.observe(with_vlans=with_vlans)
    try:
        actions = plan(desired, observed, scope=[n.name for n in nets] if names else None)
    except PlanConflict as err:
        raise ConflictError(str(err)) from err
    return Planned(actions, observed)


def apply_model(model: Model, names: Sequence[str] | None = None) -> list[str]:
    """Reconcile ``names`` (all networks when empty); returns a line per change made."""
    nets = select(model, names)
    check_capabilities(nets)
    planned = plan_model(model, names)
    if not planned.actions:
        return []
    with contextlib.ExitStack() as undo:
        done = netlink.apply_actions(planned.actions, undo.callback, planned.observed)
        undo.pop_all()
    return done


def down(names: Sequence[str]) -> list[str]:
    """Remove every link owned by the named networks (defined or not)."""
    observed = netlink.observe()
    actions = plan_down(observed, names)
    if not actions:
        return []
    with contextlib.ExitStack() as undo:
        done = netlink.apply_actions(actions, undo.callback, observed)
        undo.pop_all()
    return done


def owned_networks(observed: Observed) -> list[str]:
    return sorted({n for link in observed.links if (n := link.owner_network)})
