"""One network definition file -> ``vnet.model.Network``, with every problem collected."""

from __future__ import annotations

import re
from typing import Any

from vnet.config.services import read_dns, read_ipv4, read_tftp
from vnet.config.source import Reader, as_bool, as_int, as_str
from vnet.model import (
    BOND_MODES,
    BondSpec,
    BridgeSpec,
    Guest,
    MacvtapMode,
    Mode,
    Network,
    PortForward,
    PortKind,
    PortVlan,
    UplinkSpec,
    check_ifname,
    normalize_mac,
    vlan_ifname,
)
from vnet.naming import default_bridge_name, default_port_ifname

_NET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_GUEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

TOP_KEYS = {
    "name", "mode", "bridge", "uplink", "macvtap", "ipv4", "dns", "tftp", "policies", "guests",
    "forwards", "unknown-ports",
}


def as_ifname(value: Any) -> str:
    return check_ifname(as_str(value))


def as_vlan_id(value: Any) -> int:
    return as_int(1, 4094, "VLAN id")(value)


def as_net_name(value: Any) -> str:
    text = as_str(value)
    if not _NET_NAME.match(text):
        raise ValueError(
            f"network name {text!r} must be 1-32 of a-z, 0-9, '-', '_' starting with a letter or digit"
        )
    return text


def as_mode(value: Any) -> Mode:
    try:
        return Mode(as_str(value))
    except ValueError as err:
        raise ValueError(f"mode {value!r} is not one of {', '.join(m.value for m in Mode)}") from err


def as_mac(value: Any) -> str:
    mac = normalize_mac(as_str(value))
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast MAC; a guest needs a unicast address")
    if mac == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC")
    return mac


def read_network(file: str, doc: Any, problems: list[Any],
                 known_policies: set[str] | None) -> Network | None:
    """Build a Network from one parsed file; problems go to ``problems``; None if unusable."""
    r = Reader(file, doc, "", problems, 1)
    if not r.expect_mapping():
        return None
    r.only_keys(TOP_KEYS)
    name = r.convert("name", as_net_name, required=True)
    mode = r.convert("mode", as_mode, required=True)
    if mode is None:  # every other check depends on the mode
        return None
    valid_name = name is not None
    name = name or "invalid"

    bridge = _read_bridge(r, name, mode)
    uplink = _read_uplink(r, mode)
    macvtap_mode = MacvtapMode.BRIDGE
    if r.has("macvtap"):
        m = r.child("macvtap")
        if mode != Mode.MACVTAP:
            r.problem("macvtap", f"mode {mode} has no macvtap settings (only mode macvtap)")
        elif m.expect_mapping():
            m.only_keys({"mode"})
            macvtap_mode = m.convert("mode", _as_macvtap_mode, MacvtapMode.BRIDGE) or macvtap_mode
    ipv4 = None
    if r.has("ipv4"):
        if mode == Mode.MACVTAP:
            r.problem("ipv4", "mode macvtap has no bridge to hold an address; remove ipv4")
        else:
            ipv4 = read_ipv4(r.child("ipv4"))
    elif mode in (Mode.NAT, Mode.ROUTE):
        r.problem(None, f"mode {mode} needs ipv4.address (the guests' gateway)")
    dns = tftp = None
    for key in ("dns", "tftp"):
        if r.has(key) and r.raw("ipv4") is None:
            r.problem(key, f"{key} needs ipv4.address on this network to listen on")
    if r.has("dns"):
        dns = read_dns(r.child("dns"))
    if r.has("tftp"):
        tftp = read_tftp(r.child("tftp"))
    policies = _read_policy_list(r, "policies", known_policies)
    if mode == Mode.OPEN and policies:
        r.problem("policies", "mode open installs no vnet rules; remove policies or change mode")
    guests = _read_guests(r, name, mode, uplink, bridge, ipv4, known_policies)
    forwards = _read_forwards(r, mode, guests)

    def as_unknown_ports(value: Any) -> str:
        if value not in ("isolated", "allow"):
            raise ValueError(f"unknown-ports {value!r} must be isolated or allow")
        return str(value)

    unknown_ports = r.convert("unknown-ports", as_unknown_ports, "isolated") or "isolated"
    if not valid_name:
        return None
    return Network(
        name=name,
        mode=mode,
        source=file,
        bridge=bridge,
        uplink=uplink,
        macvtap_mode=macvtap_mode,
        ipv4=ipv4,
        dns=dns,
        tftp=tftp,
        policies=policies,
        guests=guests,
        forwards=forwards,
        unknown_ports=unknown_ports,
    )


def _as_macvtap_mode(value: Any) -> MacvtapMode:
    try:
        return MacvtapMode(as_str(value))
    except ValueError as err:
        opts = ", ".join(m.value for m in MacvtapMode)
        raise ValueError(f"macvtap mode {value!r} is not one of {opts}") from err


def _read_bridge(r: Reader, name: str, mode: Mode) -> BridgeSpec | None:
    if mode == Mode.MACVTAP:
        if r.has("bridge"):
            r.problem("bridge", "mode macvtap attaches guests to the uplink directly; remove bridge")
        return None
    if not r.has("bridge"):
        return BridgeSpec(name=default_bridge_name(name))
    b = r.child("bridge")
    if not b.expect_mapping():
        return None
    b.only_keys({"name", "stp", "mtu", "mac", "vlan-filtering"})
    return BridgeSpec(
        name=b.convert("name", as_ifname, default_bridge_name(name)) or default_bridge_name(name),
        stp=b.convert("stp", as_bool, False) or False,
        mtu=b.convert("mtu", as_int(68, 65535, "mtu")),
        mac=b.convert("mac", as_mac),
        vlan_filtering=b.convert("vlan-filtering", as_bool, False) or False,
    )


def _read_uplink(r: Reader, mode: Mode) -> UplinkSpec | None:
    if not r.has("uplink") or r.raw("uplink") is None:
        if mode in (Mode.BRIDGE, Mode.MACVTAP):
            r.problem(None, f"mode {mode} needs an uplink")
        return None
    if mode in (Mode.ISOLATED, Mode.OPEN):
        r.problem("uplink", f"mode {mode} does not forward to an uplink; remove uplink")
        return None
    raw = r.raw("uplink")
    if isinstance(raw, str):
        ifname = r.convert("uplink", as_ifname)
        return UplinkSpec(ifname=ifname) if ifname else None
    u = r.child("uplink")
    if not u.expect_mapping():
        return None
    u.only_keys({"name", "bond", "vlan"})
    bond = None
    if u.has("bond"):
        if u.has("name"):
            u.problem("bond", "give either name or bond, not both")
        bond = _read_bond(u.child("bond"))
    ifname = u.convert("name", as_ifname)
    if bond is None and ifname is None and not u.has("bond"):
        u.problem(None, "needs a name (an existing device) or a bond")
        return None
    vlan = u.convert("vlan", as_vlan_id)
    base = bond.name if bond else ifname
    if vlan is not None and base is not None:
        sub = vlan_ifname(base, vlan)
        if sub != f"{base}.{vlan}":
            u.problem("vlan", f"'{base}.{vlan}' exceeds 15 bytes; the VLAN device would be '{sub}'")
    if bond is None and ifname is None:
        return None
    return UplinkSpec(ifname=ifname, bond=bond, vlan=vlan)


def _read_bond(r: Reader) -> BondSpec | None:
    if not r.expect_mapping():
        return None
    r.only_keys({"name", "mode", "miimon", "members"})

    def as_bond_mode(v: Any) -> str:
        text = as_str(str(v))
        if text not in BOND_MODES:
            raise ValueError(f"bond mode {text!r} is not one of {', '.join(BOND_MODES)}")
        return text

    name = r.convert("name", as_ifname, required=True)
    members = tuple(m for _, item in r.items("members") if (m := item.value(as_ifname)))
    if not members and r.has("name"):
        r.problem(None, "a bond needs at least one member")
    if len(set(members)) != len(members):
        r.problem("members", "a member is listed twice")
    if name in members:
        r.problem("members", f"bond {name!r} cannot be its own member")
    if name is None:
        return None
    return BondSpec(
        name=name,
        mode=r.convert("mode", as_bond_mode, "active-backup") or "active-backup",
        miimon=r.convert("miimon", as_int(0, 100000, "miimon"), 100) or 0,
        members=members,
    )


def _read_policy_list(r: Reader, key: str, known: set[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    holder = r.child(key)
    for i, item in r.items(key):
        name = item.value(as_str)
        if name is None:
            continue
        if not _POLICY_NAME.match(name):
            holder.problem(i, f"{name!r} is not a policy name")
        elif known is not None and name not in known:
            holder.problem(i, f"unknown policy {name!r}: not built in, and no {name}.yaml in the policy dir")
        else:
            out.append(name)
    return tuple(out)


def _read_port_vlan(r: Reader, key: str) -> PortVlan | None:
    raw = r.raw(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        vid = r.convert(key, as_vlan_id)
        return PortVlan(pvid=vid) if vid else None
    v = r.child(key)
    if not v.expect_mapping():
        return None
    v.only_keys({"access", "trunk", "native"})
    if v.has("access") and (v.has("trunk") or v.has("native")):
        v.problem(None, "an access port has no trunk or native VLAN; use one or the other")
    access = v.convert("access", as_vlan_id)
    trunk = tuple(sorted({x for _, item in v.items("trunk") if (x := item.value(as_vlan_id))}))
    native = v.convert("native", as_vlan_id)
    if access is not None:
        return PortVlan(pvid=access)
    if not trunk and native is None:
        v.problem(None, "give access: N, or trunk: [..] and/or native: N")
        return None
    return PortVlan(pvid=native, tagged=tuple(x for x in trunk if x != native))


def _read_guests(r: Reader, net: str, mode: Mode, uplink: UplinkSpec | None,
                 bridge: BridgeSpec | None, ipv4: Any, known: set[str] | None) -> tuple[Guest, ...]:
    guests: list[Guest] = []
    seen_name: dict[str, int] = {}
    seen_mac: dict[str, int] = {}
    seen_if: dict[str, int] = {}
    seen_ip: dict[Any, int] = {}
    reservations = ipv4.dhcp.reservations if ipv4 is not None and ipv4.dhcp is not None else ()
    by_mac = {res.mac: res for res in reservations if res.mac}
    holder = r.child("guests")
    default_port = PortKind.MACVTAP if mode == Mode.MACVTAP else PortKind.TAP
    for i, g in r.items("guests"):
        if not g.expect_mapping():
            continue
        g.only_keys({"name", "mac", "port", "ifname", "policies", "vlan", "netns", "owner", "group",
                     "multi-queue", "vnet-hdr"})
        name = g.convert("name", _as_guest_name, required=True)
        mac = g.convert("mac", as_mac, required=True)
        port = g.convert("port", _as_port_kind, default_port) or default_port
        if mode == Mode.MACVTAP and port != PortKind.MACVTAP:
            g.problem("port", f"mode macvtap gives every guest a macvtap port, not {port}")
        if port == PortKind.MACVTAP and uplink is None and mode != Mode.MACVTAP:
            g.problem("port", "a macvtap port needs the network's uplink as its parent")
        ifname = g.convert("ifname", as_ifname)
        if ifname is None and name is not None:
            ifname = default_port_ifname(net, name)
        vlan = _read_port_vlan(g, "vlan") if g.has("vlan") else None
        if vlan is not None and (bridge is None or not bridge.vlan_filtering):
            g.problem("vlan", "per-port VLANs need bridge.vlan-filtering: true")
        netns = g.convert("netns", _as_netns)
        if netns is not None and port != PortKind.VETH:
            g.problem("netns", "only a veth port can be moved into a namespace (port: veth)")
        policies = _read_policy_list(g, "policies", known) if g.has("policies") else ()
        if g.has("policies") and mode == Mode.OPEN:
            g.problem("policies", "mode open installs no vnet rules")
        if name is None or mac is None or ifname is None:
            continue
        for seen, value, what in ((seen_name, name, "name"), (seen_mac, mac, "MAC"),
                                  (seen_if, ifname, "port ifname")):
            if value in seen:
                holder.problem(i, f"duplicate guest {what} {value!r} (also guests[{seen[value]}])")
            seen.setdefault(value, i)
        res = by_mac.get(mac)
        ip = res.ip if res is not None else None
        if ip is not None:
            if ip in seen_ip:
                holder.problem(i, f"duplicate guest IP {ip} (also guests[{seen_ip[ip]}])")
            seen_ip.setdefault(ip, i)
        if bridge is not None and ifname == bridge.name:
            holder.problem(i, f"port ifname {ifname!r} is the bridge's name")
        guests.append(Guest(
            name=name, mac=mac, ifname=ifname, port=port,
            policies=policies if g.has("policies") else (),
            vlan=vlan, netns=netns,
            owner=g.convert("owner", as_int(0, 2**32 - 2, "owner uid")),
            group=g.convert("group", as_int(0, 2**32 - 2, "group gid")),
            multi_queue=g.convert("multi-queue", as_bool, False) or False,
            vnet_hdr=bool(g.convert("vnet-hdr", as_bool, True)),
            ip=ip,
        ))
    return tuple(guests)


def _as_guest_name(value: Any) -> str:
    text = as_str(str(value) if isinstance(value, int) else value)
    if not _GUEST_NAME.match(text):
        raise ValueError(f"guest name {text!r}: use letters, digits, '-', '_', '.' (max 63)")
    return text


def _as_port_kind(value: Any) -> PortKind:
    try:
        return PortKind(as_str(value))
    except ValueError as err:
        raise ValueError(f"port {value!r} is not one of tap, macvtap, veth") from err


def _as_netns(value: Any) -> str:
    text = as_str(value)
    if "/" in text or text in (".", "..") or len(text) > 255:
        raise ValueError(f"{text!r} is not a network namespace name")
    return text


def _read_forwards(r: Reader, mode: Mode, guests: tuple[Guest, ...]) -> tuple[PortForward, ...]:
    if not r.has("forwards"):
        return ()
    if mode != Mode.NAT:
        r.problem("forwards", f"port forwards need mode nat, not {mode}")
        return ()
    out: list[PortForward] = []
    names = {g.name for g in guests}
    seen: set[tuple[str, int]] = set()
    for _, f in r.items("forwards"):
        if not f.expect_mapping():
            continue
        f.only_keys({"proto", "port", "to"})

        def as_proto(v: Any) -> str:
            if v not in ("tcp", "udp"):
                raise ValueError(f"proto {v!r} must be tcp or udp")
            return str(v)

        proto = f.convert("proto", as_proto, "tcp") or "tcp"
        port = f.convert("port", as_int(1, 65535, "port"), required=True)
        to = f.convert("to", as_str, required=True)
        if port is None or to is None:
            continue
        guest, _, to_port_s = to.partition(":")
        if guest not in names:
            f.problem("to", f"guest {guest!r} is not defined in this network")
            continue
        to_port = port
        if to_port_s:
            if not to_port_s.isdigit() or not 0 < int(to_port_s) < 65536:
                f.problem("to", f"{to!r}: port must be 1..65535")
                continue
            to_port = int(to_port_s)
        if (proto, port) in seen:
            f.problem("port", f"{proto} port {port} is forwarded twice")
        seen.add((proto, port))
        out.append(PortForward(proto=proto, port=port, guest=guest, to_port=to_port))
    return tuple(out)
