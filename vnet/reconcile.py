"""Make the host match the model: capability check -> observe -> plan -> apply, transactionally.

The imperative shell around ``vnet.plan``: used by ``vnet plan/apply/down/status`` and the daemon.
A failure part-way undoes every step that apply had made (in reverse order) and re-raises, so
no half-built network is left. Must not be called from inside a running asyncio event loop
(pyroute2's synchronous API refuses); the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vnet.errors import CapabilityError, ConflictError, HostError
from vnet.host import caps, netlink
from vnet.model import Mode, Model, Network, PortKind
from vnet.plan import Action, Observed, PlanConflict, desired_model, plan, plan_down, restrict
from vnet.policy.compile import Compiled
from vnet.policy.loaded import Loaded

log = logging.getLogger(__name__)

RULESET_STAMP = "nftables.json"  # the document last loaded, in the state dir
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
    """The nftables side of a reconcile: what to load, and how (nothing, elements, replace)."""

    document: dict[str, Any] | None  # None: vnet needs no tables (delete them)
    stamp: Path | None  # where the last loaded document is kept
    change: str | None  # what apply would do, or None when the kernel already has it
    elements: list[Any] | None = None  # set/map element changes instead of a replacement
    compiled: Compiled | None = None  # the compiler's state for ``document`` (port ids, ...)

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


def _loaded(stamp: Path | None) -> Loaded | None:
    if stamp is None or not stamp.exists():
        return None
    try:
        doc = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None  # unreadable: replace the tables
    return Loaded.of(doc) if isinstance(doc, dict) else None


def unknown_ports(model: Model, observed: Observed) -> dict[str, list[str]]:
    """Per network: links on its bridge that are no guest's port and not its uplink (someone
    enslaved them by hand, or libvirt without vnet's hook). Read from the kernel."""
    out: dict[str, list[str]] = {}
    for net in model.networks:
        if net.bridge is None:
            continue
        known = {g.ifname for g in net.guests}
        if net.uplink is not None:
            known.add(net.uplink.device)
        found = sorted(link.ifname for link in observed.links
                       if link.master == net.bridge.name and link.ifname not in known
                       and link.owner_network is None)
        if found:
            out[net.name] = found
    return out


def plan_filters(model: Model, policy_dir: Path | None, state_dir: Path | None,
                 unknown: dict[str, list[str]] | None = None,
                 baseline: Loaded | None = None) -> FilterPlan:
    """Compile vnet's nftables tables for ``model`` and compare with what is loaded.

    ``baseline``: what the caller knows it loaded (the daemon keeps it in memory); without it,
    the document last loaded (``STATE_DIR/nftables.json``, written by whoever loaded it). The
    same structure (tables, chains, rules, sets) with other elements -- a guest added or
    removed, a reservation changed -- is loaded as element changes; anything else replaces the
    tables in one transaction. The kernel is asked only whether vnet's own tables exist.
    """
    from vnet.host import nft
    from vnet.policy import compile_state, load_library

    filtered = [n for n in model.networks if n.mode != Mode.OPEN]
    stamp = state_dir / RULESET_STAMP if state_dir is not None else None
    present = set(nft.owned_tables_present())
    if not filtered:
        return FilterPlan(None, stamp, "delete nftables tables bridge vnet, inet vnet" if present else None)
    library = load_library(policy_dir if policy_dir is not None and policy_dir.is_dir() else None)
    compiled = compile_state(replace(model, networks=tuple(filtered)), library, _leases(state_dir),
                             handoff=_handoff(), unknown=unknown)
    doc: dict[str, Any] = json.loads(json.dumps(compiled.document()))  # plain JSON, as stored
    complete = present == {family for family, _ in nft.TABLES}
    old = (baseline if baseline is not None else _loaded(stamp)) if complete else None
    names = ", ".join(n.name for n in filtered)
    changes = old.changes_to(doc) if old is not None else None
    if changes == []:
        return FilterPlan(doc, stamp, None, compiled=compiled)
    if changes is not None:
        return FilterPlan(doc, stamp, f"update nftables elements ({len(changes)} changes, networks {names})",
                          elements=changes, compiled=compiled)
    rules = sum(1 for c in doc.get("nftables", []) if isinstance(c, dict) and "rule" in c.get("add", {}))
    return FilterPlan(doc, stamp, f"replace nftables tables bridge vnet, inet vnet ({rules} rules, "
                                  f"networks {names})", compiled=compiled)


def apply_filter_plan(fp: FilterPlan) -> list[str]:
    from vnet.host import nft

    if fp.change is None:
        return []
    if fp.document is None:
        nft.delete_tables()
        if fp.stamp is not None:
            fp.stamp.unlink(missing_ok=True)
        return [fp.change]
    if fp.elements is not None:
        try:
            nft.update_elements(fp.elements)
        except nft.NftError as err:
            # The baseline was stale (a daemon killed after changes it had not written down):
            # load the whole document instead, in one transaction as always.
            log.warning("element update refused (%s): loading vnet's tables whole", err)
            nft.replace(fp.document)
    else:
        nft.replace(fp.document)
    write_stamp(fp.stamp, fp.document)
    return [fp.change]


def write_stamp(stamp: Path | None, document: dict[str, Any]) -> None:
    """Record the document now loaded (for ``vnet apply`` without a daemon, and restarts)."""
    if stamp is None:
        return
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, sort_keys=True))
    tmp.replace(stamp)


def plan_model(model: Model, names: Sequence[str] | None = None, *, policy_dir: Path | None = None,
               state_dir: Path | None = None, filters: bool = True,
               baseline: Loaded | None = None) -> Planned:
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
    fp = plan_filters(model, policy_dir, state_dir, unknown_ports(model, observed),
                      baseline) if filters else None
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
    done = apply_planned(planned)
    netlink.reap_graves()  # ports a daemon took out of service and did not delete yet
    return done


def apply_planned(planned: Planned) -> list[str]:
    """Carry out a plan: L2 actions in order, then the filter change; all undone on failure."""
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
    netlink.reap_graves()
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
    return sorted({n for link in observed.links if (n := link.owner_network) and n != "-"})
