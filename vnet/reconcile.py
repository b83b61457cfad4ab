"""Make the host match the model: capability check -> observe -> plan -> apply, transactionally.

The imperative shell around ``vnet.plan``: used by ``vnet plan/apply/down/status`` and the daemon.
A failure part-way undoes every step that apply had made (in reverse order) and re-raises, so
no half-built network is left. Must not be called from inside a running asyncio event loop
(pyroute2's synchronous API refuses); the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vnet.errors import CapabilityError, ConflictError, HostError
from vnet.host import caps, netlink
from vnet.model import Mode, Model, Network, PortKind
from vnet.plan import Action, Observed, PlanConflict, desired_model, plan, plan_down, restrict

RULESET_STAMP = "ruleset.sha256"
HANDOFF_SYSCTLS = {"ip": "net.bridge.bridge-nf-call-iptables", "ip6": "net.bridge.bridge-nf-call-ip6tables"}


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
    caps.probe(feature for net in networks for feature, _ in required_features(net))
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
class FilterPlan:
    """The nftables side of a reconcile: the compiled document and whether it must be loaded."""

    document: dict[str, Any] | None  # None: vnet needs no tables (delete them)
    digest: str
    stamp: Path | None
    change: str | None  # what apply would do, or None when the kernel already has it

    def describe(self) -> str:
        return self.change or "no changes"


@dataclass(frozen=True)
class Planned:
    actions: list[Action]
    observed: Observed
    filters: FilterPlan | None = None

    @property
    def lines(self) -> list[str]:
        out = [a.describe() for a in self.actions]
        if self.filters is not None and self.filters.change:
            out.append(self.filters.change)
        return out


def _leases(state_dir: Path | None) -> dict[tuple[str, str], set[ipaddress.IPv4Address]]:
    from vnet.leases import read_leases

    out: dict[tuple[str, str], set[ipaddress.IPv4Address]] = {}
    if state_dir is None:
        return out
    for record in read_leases(state_dir / "leases.db", active_only=True):
        out.setdefault((record.network, record.mac), set()).add(record.ip)
    return out


def _handoff() -> frozenset[str]:
    """The IP families br_netfilter hands from bridged traffic to the inet table, in this netns."""
    values = dict(netlink.read_sysctls(tuple(HANDOFF_SYSCTLS.values())))
    return frozenset(fam for fam, key in HANDOFF_SYSCTLS.items() if values.get(key) == "1")


def plan_filters(model: Model, policy_dir: Path | None, state_dir: Path | None) -> FilterPlan:
    """Compile vnet's nftables tables for ``model`` and compare with what was last loaded."""
    from vnet.host import nft
    from vnet.policy import compile_ruleset, load_library

    filtered = [n for n in model.networks if n.mode != Mode.OPEN]
    stamp = state_dir / RULESET_STAMP if state_dir is not None else None
    present = _vnet_tables_present(nft)
    if not filtered:
        return FilterPlan(None, "", stamp, "delete nftables tables bridge vnet, inet vnet" if present else None)
    library = load_library(policy_dir if policy_dir is not None and policy_dir.is_dir() else None)
    doc = compile_ruleset(replace(model, networks=tuple(filtered)), library, _leases(state_dir),
                          handoff=_handoff())
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    loaded = stamp.read_text().strip() if stamp is not None and stamp.exists() else ""
    if present and loaded == digest:
        return FilterPlan(doc, digest, stamp, None)
    rules = sum(1 for c in doc.get("nftables", []) if isinstance(c, dict) and "rule" in c.get("add", {}))
    return FilterPlan(doc, digest, stamp, f"replace nftables tables bridge vnet, inet vnet ({rules} rules, "
                                          f"networks {', '.join(n.name for n in filtered)})")


def _vnet_tables_present(nft: Any) -> bool:
    listed = nft.run_json("list tables").get("nftables", [])
    names = {(t["table"]["family"], t["table"]["name"]) for t in listed if "table" in t}
    return any(t in names for t in nft.TABLES)


def apply_filter_plan(fp: FilterPlan) -> list[str]:
    from vnet.host import nft

    if fp.change is None:
        return []
    if fp.document is None:
        nft.delete_tables()
        if fp.stamp is not None:
            fp.stamp.unlink(missing_ok=True)
    else:
        nft.replace(fp.document)
        if fp.stamp is not None:
            fp.stamp.parent.mkdir(parents=True, exist_ok=True)
            fp.stamp.write_text(fp.digest + "\n")
    return [fp.change]


def plan_model(model: Model, names: Sequence[str] | None = None, *, policy_dir: Path | None = None,
               state_dir: Path | None = None, filters: bool = True) -> Planned:
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
    fp = plan_filters(model, policy_dir, state_dir) if filters else None
    return Planned(actions, observed, fp)


def apply_model(model: Model, names: Sequence[str] | None = None, *, policy_dir: Path | None = None,
                state_dir: Path | None = None, filters: bool = True) -> list[str]:
    """Reconcile ``names`` (all networks when empty); returns a line per change made.

    The L2 changes come first; the nftables tables (always the whole model: they are shared)
    are replaced last in one transaction. If that fails, the L2 changes are undone too.
    """
    nets = select(model, names)
    check_capabilities(nets)
    planned = plan_model(model, names, policy_dir=policy_dir, state_dir=state_dir, filters=filters)
    if not planned.actions and (planned.filters is None or planned.filters.change is None):
        return []
    with contextlib.ExitStack() as undo:
        done = netlink.apply_actions(planned.actions, undo.callback, planned.observed)
        if planned.filters is not None:
            done += apply_filter_plan(planned.filters)
        undo.pop_all()
    return done


def down(names: Sequence[str], model: Model | None = None, *, policy_dir: Path | None = None,
         state_dir: Path | None = None) -> list[str]:
    """Remove every link owned by the named networks (defined or not), and their filter rules.

    With ``model``, the tables are recompiled for the networks that remain; without it (the
    definitions cannot be read) vnet's tables are removed only when every network goes down.
    """
    observed = netlink.observe()
    actions = plan_down(observed, names)
    done: list[str] = []
    if actions:
        with contextlib.ExitStack() as undo:
            done = netlink.apply_actions(actions, undo.callback, observed)
            undo.pop_all()
    if model is not None:
        remaining = replace(model, networks=tuple(n for n in model.networks if n.name not in names))
        done += apply_filter_plan(plan_filters(remaining, policy_dir, state_dir))
    elif not owned_networks(netlink.observe(addresses_of=())):
        done += apply_filter_plan(plan_filters(Model(), policy_dir, state_dir))
    return done


def owned_networks(observed: Observed) -> list[str]:
    return sorted({n for link in observed.links if (n := link.owner_network)})
