"""Desired L2 state from the model, and the ordered actions that make the host match it. Pure.

``desired_links(network)`` lists what vnet should own (bridge, bond, VLAN, one port per guest)
and the foreign links it must enslave (bond members, a bridged uplink). ``plan(desired,
observed, scope)`` diffs that against ``LinkState``s read from the kernel and returns actions:
parents before children on the way up, children before parents on the way down, deletions of
orphans last (so a failure part-way has deleted nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from vnet.model import Guest, Mode, Network, PortKind, PortVlan
from vnet.naming import GRAVE_ALIAS, alias, link_group, parse_alias

# Creation order of kinds: a link's parent always has a lower rank.
_RANK = {"bond": 0, "vlan": 1, "bridge": 2, "tap": 3, "macvtap": 3, "veth": 3}


@dataclass(frozen=True)
class LinkAttrs:
    """The attributes vnet manages on a link, wanted (LinkSpec) or seen (LinkState).

    None means "unset" in what the kernel reports and "don't care" in what is wanted.
    """

    ifname: str
    kind: str  # bridge | bond | vlan | tap | macvtap | veth (as seen: also tun, device kinds)
    master: str | None = None
    mtu: int | None = None
    mac: str | None = None
    parent: str | None = None  # vlan / macvtap lower device
    stp: bool | None = None
    vlan_filtering: bool | None = None
    bond_mode: str | None = None
    miimon: int | None = None
    vlan_id: int | None = None
    macvtap_mode: str | None = None
    owner: int | None = None
    tap_group: int | None = None
    multi_queue: bool | None = None
    vnet_hdr: bool | None = None
    port_vlan: PortVlan | None = None
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()


@dataclass(frozen=True)
class LinkSpec(LinkAttrs):
    """A link vnet owns, as it should be."""

    network: str = field(kw_only=True)
    role: str = field(kw_only=True)  # bridge | bond | uplink-vlan | port | uplink | bond-member
    guest: str | None = field(default=None, kw_only=True)
    peer_netns: str | None = field(default=None, kw_only=True)
    peer_mac: str | None = field(default=None, kw_only=True)

    @property
    def alias(self) -> str:
        return alias(self.network, self.role, self.guest)

    @property
    def group(self) -> int:
        return link_group(self.network)


@dataclass(frozen=True)
class Enslave:
    """A foreign link (not vnet's) that a network needs enslaved to one of vnet's links."""

    ifname: str
    master: str
    network: str
    key: str  # where the definition asks for it, e.g. "uplink.bond.members"
    to_bond: bool = False  # a bond member (must be down while it is enslaved)
    port_vlan: PortVlan | None = None  # on a VLAN-filtering bridge: the uplink's trunk


@dataclass(frozen=True)
class Desired:
    links: tuple[LinkSpec, ...] = ()
    enslave: tuple[Enslave, ...] = ()
    needs: tuple[str, ...] = ()  # existing foreign devices: "network:key:ifname"
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LinkState(LinkAttrs):
    """A link as the kernel reports it."""

    index: int = field(default=0, kw_only=True)
    alias: str | None = field(default=None, kw_only=True)
    group: int = field(default=0, kw_only=True)
    up: bool = field(default=False, kw_only=True)
    carrier: bool = field(default=False, kw_only=True)
    persist: bool | None = field(default=None, kw_only=True)  # tun/tap: False = a process holds it

    @property
    def held(self) -> bool:
        """A TAP a process (QEMU, libvirt) created and holds open: never recreate it."""
        return self.kind in ("tap", "tun") and self.persist is False

    @property
    def owner_network(self) -> str | None:
        parsed = parse_alias(self.alias)
        return parsed[0] if parsed else None


@dataclass(frozen=True)
class Observed:
    links: tuple[LinkState, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()

    def by_name(self) -> dict[str, LinkState]:
        return {link.ifname: link for link in self.links}


@dataclass(frozen=True)
class Action:
    op: str  # create | adopt | modify | replace | delete | enslave | release | sysctl
    ifname: str
    network: str
    kind: str = ""
    spec: LinkSpec | None = None
    changes: tuple[tuple[str, object, object], ...] = ()  # (attribute, old, new)
    value: str = ""  # enslave: master; sysctl: value
    old: LinkState | None = field(default=None, compare=False)

    def describe(self) -> str:
        what = f"{self.kind} {self.ifname}" if self.kind else self.ifname
        owner = f" (network {self.network}" + (
            f", guest {self.spec.guest})" if self.spec and self.spec.guest else ")")
        if self.op == "create" and self.spec is not None:
            return f"create {what}{owner}{_spec_summary(self.spec)}"
        if self.op == "adopt":
            rest = ", ".join(f"{k} {_fmt(old)} -> {_fmt(new)}" for k, old, new in self.changes
                             if k != "owner")
            return (f"adopt {what}{owner}: made by something else (QEMU, libvirt)"
                    + (f"; {rest}" if rest else ""))
        if self.op in ("modify", "replace"):
            diff = ", ".join(f"{k} {_fmt(old)} -> {_fmt(new)}" for k, old, new in self.changes)
            return f"{self.op} {what}{owner}: {diff}"
        if self.op == "enslave":
            return f"enslave {self.ifname} to {self.value} (network {self.network})"
        if self.op == "release":
            return f"release {self.ifname} from {self.value} (network {self.network})"
        if self.op == "sysctl":
            return f"sysctl {self.ifname} = {self.value} (network {self.network})"
        return f"{self.op} {what}{owner}"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"op": self.op, "ifname": self.ifname, "network": self.network}
        if self.kind:
            out["kind"] = self.kind
        if self.spec is not None and self.spec.guest:
            out["guest"] = self.spec.guest
        if self.changes:
            out["changes"] = {k: {"old": _fmt(o), "new": _fmt(n)} for k, o, n in self.changes}
        if self.value:
            out["value"] = self.value
        out["text"] = self.describe()
        return out


def _fmt(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, PortVlan):
        return _fmt_vlan(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _fmt_vlan(v: PortVlan) -> str:
    parts = [f"pvid {v.pvid}"] if v.pvid else []
    if v.tagged:
        parts.append("tagged " + ",".join(str(x) for x in v.tagged))
    return " ".join(parts) or "none"


def _spec_summary(s: LinkSpec) -> str:
    bits = []
    for key in ("master", "parent", "mtu", "mac", "stp", "vlan_filtering", "bond_mode", "miimon",
                "vlan_id", "macvtap_mode", "owner", "tap_group", "multi_queue", "peer_netns"):
        value = getattr(s, key)
        if value is not None and value is not False:
            bits.append(f"{key.replace('_', '-')} {_fmt(value)}")
    if s.port_vlan:
        bits.append(f"vlan {_fmt_vlan(s.port_vlan)}")
    if s.addresses:
        bits.append("address " + ",".join(str(a) for a in s.addresses))
    return (": " + ", ".join(bits)) if bits else ""


# -- desired state ---------------------------------------------------------------------------


def desired_network(net: Network) -> Desired:
    links: list[LinkSpec] = []
    enslave: list[Enslave] = []
    needs: list[str] = []
    up = net.uplink
    if up is not None:
        if up.bond is not None:
            b = up.bond
            links.append(LinkSpec(ifname=b.name, kind="bond", network=net.name, role="bond",
                                  bond_mode=b.mode, miimon=b.miimon))
            enslave += [Enslave(m, b.name, net.name, "uplink.bond.members", to_bond=True)
                        for m in b.members]
        else:
            assert up.ifname is not None
            needs.append(f"{net.name}:uplink:{up.ifname}")
        if up.vlan is not None:
            links.append(LinkSpec(ifname=up.device, kind="vlan", network=net.name,
                                  role="uplink-vlan", parent=up.base, vlan_id=up.vlan))
    if net.bridge is not None:
        br = net.bridge
        links.append(LinkSpec(
            ifname=br.name, kind="bridge", network=net.name, role="bridge", mtu=br.mtu, mac=br.mac,
            stp=br.stp, vlan_filtering=br.vlan_filtering,
            addresses=(net.ipv4.address,) if net.ipv4 is not None else (),
        ))
        if net.mode == Mode.BRIDGE and up is not None:
            trunk: PortVlan | None = None
            if br.vlan_filtering:
                vids = {v for g in net.guests if g.vlan
                        for v in (*g.vlan.tagged, *((g.vlan.pvid,) if g.vlan.pvid else ()))}
                trunk = PortVlan(pvid=1, tagged=tuple(sorted(vids - {1})))
            enslave.append(Enslave(up.device, br.name, net.name, "uplink", port_vlan=trunk))
    links += [desired_port(net, g) for g in net.guests]
    sysctls: list[tuple[str, str]] = []
    if net.mode in (Mode.NAT, Mode.ROUTE):
        sysctls.append(("net.ipv4.ip_forward", "1"))
    return Desired(tuple(links), tuple(enslave), tuple(needs), tuple(sysctls))


def desired_port(net: Network, g: Guest) -> LinkSpec:
    """The port of one guest (O(1): what a per-guest change needs, without the network's)."""
    common = {"ifname": g.ifname, "network": net.name, "role": "port", "guest": g.name}
    if g.port == PortKind.MACVTAP:
        assert net.uplink is not None
        return LinkSpec(kind="macvtap", parent=net.uplink.device, mac=g.mac,
                        macvtap_mode=net.macvtap_mode.value, **common)  # type: ignore[arg-type]
    master = net.bridge.name if net.bridge else None
    mtu = net.bridge.mtu if net.bridge else None
    if g.port == PortKind.VETH:
        return LinkSpec(kind="veth", master=master, mtu=mtu, peer_netns=g.netns,
                        peer_mac=g.mac, port_vlan=g.vlan, **common)  # type: ignore[arg-type]
    return LinkSpec(kind="tap", master=master, mtu=mtu, owner=g.owner, tap_group=g.group,
                    multi_queue=g.multi_queue, vnet_hdr=g.vnet_hdr, port_vlan=g.vlan,
                    **common)  # type: ignore[arg-type]


def desired_model(networks: Iterable[Network]) -> Desired:
    parts = [desired_network(n) for n in networks]
    sysctls = sorted({s for p in parts for s in p.sysctls})
    return Desired(
        links=tuple(link for p in parts for link in p.links),
        enslave=tuple(e for p in parts for e in p.enslave),
        needs=tuple(n for p in parts for n in p.needs),
        sysctls=tuple(sysctls),
    )


# -- the diff --------------------------------------------------------------------------------


class PlanConflict(Exception):
    """A desired link's name is held by a foreign link, or a needed device is missing."""


def plan(desired: Desired, observed: Observed, scope: Sequence[str] | None = None) -> list[Action]:
    """Actions turning ``observed`` into ``desired``.

    ``scope``: the networks being reconciled; owned links of other networks are left alone.
    None means every network: owned links of networks no longer defined are deleted.
    Raises PlanConflict (with every conflict found) when the host blocks the plan.
    """
    have = observed.by_name()
    conflicts: list[str] = []
    for need in desired.needs:
        net, key, ifname = need.split(":", 2)
        if ifname not in have:
            conflicts.append(f"network {net!r}: {key} {ifname!r} does not exist")
    ups: list[Action] = []
    wanted = {s.ifname: s for s in desired.links}
    for spec in sorted(desired.links, key=lambda s: _RANK[s.kind]):
        cur = have.get(spec.ifname)
        if cur is None:
            ups.append(Action("create", spec.ifname, spec.network, spec.kind, spec))
            continue
        if cur.owner_network is None and _adoptable(spec, cur):
            # QEMU or libvirt created the guest's TAP first (script=, managed='no'): take it
            # as the guest's port (marked, attached, filtered), never recreate it.
            ups.append(Action("adopt", spec.ifname, spec.network, spec.kind, spec,
                              _adopt_changes(spec, cur), old=cur))
            continue
        if cur.owner_network != spec.network:
            who = f"network {cur.owner_network!r}" if cur.owner_network else "something else"
            conflicts.append(
                f"network {spec.network!r}: cannot create {spec.kind} {spec.ifname!r}: "
                f"the name is held by a {cur.kind or 'device'} created by {who}"
            )
            continue
        replace_diff = () if cur.held else _replace_changes(spec, cur)
        if replace_diff:
            ups.append(Action("replace", spec.ifname, spec.network, spec.kind, spec,
                              replace_diff, old=cur))
            continue
        diff = _modify_changes(spec, cur)
        if diff:
            ups.append(Action("modify", spec.ifname, spec.network, spec.kind, spec, diff, old=cur))
    for e in desired.enslave:
        cur = have.get(e.ifname)
        if cur is None and e.ifname in wanted:  # a link this plan creates (a VLAN on a bond)
            cur = LinkState(ifname=e.ifname, kind=wanted[e.ifname].kind,
                            alias=wanted[e.ifname].alias)
        if cur is None:
            conflicts.append(f"network {e.network!r}: {e.key}: {e.ifname!r} does not exist")
            continue
        if cur.owner_network is not None and e.ifname not in wanted:
            conflicts.append(f"network {e.network!r}: {e.key}: {e.ifname!r} belongs to network "
                             f"{cur.owner_network!r}")
            continue
        vlan_diff = e.port_vlan is not None and cur.port_vlan != e.port_vlan
        if cur.master != e.master or vlan_diff:
            if cur.master is not None and cur.master != e.master and (
                    have[cur.master].owner_network if cur.master in have else None) is None:
                conflicts.append(f"network {e.network!r}: {e.key}: {e.ifname!r} is already "
                                 f"enslaved to {cur.master!r}")
                continue
            changes = (("vlan", cur.port_vlan, e.port_vlan),) if vlan_diff else ()
            spec = LinkSpec(ifname=e.ifname, kind=cur.kind, network=e.network,
                            role="bond-member" if e.to_bond else "uplink", master=e.master,
                            port_vlan=e.port_vlan)
            ups.append(Action("enslave", e.ifname, e.network, cur.kind, spec, changes,
                              value=e.master, old=cur))
    current = dict(observed.sysctls)
    for key, value in desired.sysctls:
        if current.get(key) != value:
            net = next((s.network for s in desired.links), "")
            ups.append(Action("sysctl", key, net, value=value, changes=((key, current.get(key),
                                                                         value),)))
    if conflicts:
        raise PlanConflict("\n".join(conflicts))
    downs = [
        Action("delete", link.ifname, link.owner_network or "", link.kind, old=link)
        for link in observed.links
        if link.owner_network is not None
        and link.alias != GRAVE_ALIAS  # out of service already: reaped in one call
        and link.ifname not in wanted
        and (scope is None or link.owner_network in scope)
    ]
    # Children first: ports, then bridges, then VLANs, then bonds.
    downs.sort(key=lambda a: (-_RANK.get(a.kind if a.kind != "tun" else "tap", 3), a.ifname))
    return _order_enslaves(ups) + downs


def _adoptable(spec: LinkSpec, cur: LinkState) -> bool:
    return spec.role == "port" and spec.kind == "tap" and cur.kind in ("tap", "tun")


def _adopt_changes(spec: LinkSpec, cur: LinkState) -> tuple[tuple[str, object, object], ...]:
    out: list[tuple[str, object, object]] = [("owner", "something else", f"network {spec.network}")]
    if spec.master is not None and cur.master != spec.master:
        out.append(("master", cur.master, spec.master))
    if spec.mtu is not None and cur.mtu != spec.mtu:
        out.append(("mtu", cur.mtu, spec.mtu))
    if not cur.up:
        out.append(("state", "down", "up"))
    return tuple(out)


def _order_enslaves(actions: list[Action]) -> list[Action]:
    """Bond members are enslaved right after their bond; a bridged uplink after the bridge."""
    creates = [a for a in actions if a.op not in ("enslave", "sysctl")]
    enslaves = [a for a in actions if a.op == "enslave"]
    out: list[Action] = []
    for a in creates:
        out.append(a)
        out += [e for e in enslaves if e.value == a.ifname]
    placed = {id(a) for a in out}
    out += [e for e in enslaves if id(e) not in placed]
    out += [a for a in actions if a.op == "sysctl"]
    return out


def plan_down(observed: Observed, networks: Sequence[str]) -> list[Action]:
    """Delete every link owned by ``networks`` (children first)."""
    return plan(Desired(), observed, scope=networks)


def _replace_changes(spec: LinkSpec, cur: LinkState) -> tuple[tuple[str, object, object], ...]:
    """Differences the kernel cannot change in place: the link must be recreated."""
    kind = "tap" if cur.kind == "tun" else cur.kind
    out: list[tuple[str, object, object]] = []
    if kind != spec.kind:
        out.append(("kind", cur.kind, spec.kind))
        return tuple(out)
    if spec.kind == "vlan":
        if cur.vlan_id != spec.vlan_id:
            out.append(("vlan-id", cur.vlan_id, spec.vlan_id))
        if cur.parent != spec.parent:
            out.append(("parent", cur.parent, spec.parent))
    if spec.kind == "macvtap" and cur.parent != spec.parent:
        out.append(("parent", cur.parent, spec.parent))
    if spec.kind == "tap":
        if cur.multi_queue is not None and cur.multi_queue != spec.multi_queue:
            out.append(("multi-queue", cur.multi_queue, spec.multi_queue))
        if cur.vnet_hdr is not None and cur.vnet_hdr != spec.vnet_hdr:
            out.append(("vnet-hdr", cur.vnet_hdr, spec.vnet_hdr))
    if spec.kind == "tap":  # the kernel can set a TAP's owner/group but never unset them
        if cur.owner is not None and spec.owner is None:
            out.append(("owner", cur.owner, None))
        if cur.tap_group is not None and spec.tap_group is None:
            out.append(("group", cur.tap_group, None))
    if spec.kind == "bond" and cur.bond_mode != spec.bond_mode:
        out.append(("bond-mode", cur.bond_mode, spec.bond_mode))
    return tuple(out)


def _modify_changes(spec: LinkSpec, cur: LinkState) -> tuple[tuple[str, object, object], ...]:
    out: list[tuple[str, object, object]] = []

    def check(name: str, old: object, new: object) -> None:
        if new is not None and old != new:
            out.append((name, old, new))

    check("master", cur.master, spec.master)
    check("mtu", cur.mtu, spec.mtu)
    check("mac", cur.mac, spec.mac)
    check("stp", cur.stp, spec.stp)
    if spec.vlan_filtering or cur.vlan_filtering:
        check("vlan-filtering", cur.vlan_filtering, spec.vlan_filtering)
    check("miimon", cur.miimon, spec.miimon)
    check("macvtap-mode", cur.macvtap_mode, spec.macvtap_mode)
    if spec.kind == "tap" and not cur.held:  # a held TAP's ids are its creator's business
        if cur.owner != spec.owner:
            out.append(("owner", cur.owner, spec.owner))
        if cur.tap_group != spec.tap_group:
            out.append(("group", cur.tap_group, spec.tap_group))
    if spec.port_vlan is not None or cur.port_vlan not in (None, PortVlan(pvid=1)):
        want = spec.port_vlan or PortVlan(pvid=1)
        if cur.port_vlan != want and spec.master is not None:
            out.append(("vlan", cur.port_vlan, want))
    if set(cur.addresses) != set(spec.addresses) and spec.kind == "bridge":
        out.append(("addresses", tuple(sorted(cur.addresses)), tuple(sorted(spec.addresses))))
    if not cur.up:
        out.append(("state", "down", "up"))
    return tuple(out)


def drifted(spec: LinkSpec, state: LinkState) -> bool:
    """Whether a link vnet wants differs from what vnet made in what someone else would change
    (its mark, master, MTU, admin state): the cheap test of a link event; a plan finds all."""
    if spec.role == "uplink":
        return False  # not vnet's: only its disappearance matters
    if state.owner_network != spec.network or not state.up:
        return True
    if spec.master is not None and state.master != spec.master:
        return True
    return spec.mtu is not None and state.mtu != spec.mtu


def restrict(desired: Desired, networks: Sequence[str]) -> Desired:
    keep = set(networks)
    return replace(
        desired,
        links=tuple(s for s in desired.links if s.network in keep),
        enslave=tuple(e for e in desired.enslave if e.network in keep),
        needs=tuple(n for n in desired.needs if n.split(":", 1)[0] in keep),
    )
