"""Every L2 kernel side effect: observe links, apply plan actions. The only importer of pyroute2.

``observe()`` reads links (through the fast ``rtnl`` dump), IPv4 addresses, bridge port VLANs
and the sysctls vnet manages. ``apply_actions()`` performs a plan; each step registers its undo
on the caller's ExitStack so a failure part-way can be rolled back. Raw library errors become
HostError/ConflictError naming the object; they never leave this module.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vnet.errors import ConflictError, HostError
from vnet.host import tap as taps
from vnet.host.rtnl import NetlinkError, RawLink, Rtnl
from vnet.model import BOND_MODES, PortVlan
from vnet.naming import GRAVE_ALIAS, GRAVE_GROUP, grave_name
from vnet.plan import Action, LinkSpec, LinkState, Observed

MACVTAP_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthrough"}
MACVTAP_CODES = {v: k for k, v in MACVTAP_MODES.items()}
BRIDGE_VLAN_PVID = 2
BRIDGE_VLAN_UNTAGGED = 4
SYSCTLS = ("net.ipv4.ip_forward",)

if TYPE_CHECKING:
    from pyroute2 import IPRoute


def _iproute(**kw: Any) -> IPRoute:
    """pyroute2 costs ~0.2 s to import: only commands that change something pay for it."""
    from pyroute2 import IPRoute

    return IPRoute(**kw)


def _netlink_code(err: BaseException) -> int | None:
    """The errno of a pyroute2 NetlinkError (None for anything else), without importing pyroute2."""
    if type(err).__module__.startswith("pyroute2"):
        code = getattr(err, "code", None)
        return code if isinstance(code, int) else None
    return None


Undo = Callable[[Callable[[], None]], object]


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls(keys: Sequence[str] = SYSCTLS) -> tuple[tuple[str, str], ...]:
    out = []
    for key in keys:
        with contextlib.suppress(OSError):
            out.append((key, _sysctl_path(key).read_text().strip()))
    return tuple(out)


def _link_state(raw: RawLink, names: dict[int, str]) -> LinkState:
    kind = raw.kind
    d = raw.data
    state: dict[str, Any] = {}
    if kind == "bridge":
        state = {"stp": bool(d.get("stp_state", 0)), "vlan_filtering": bool(d.get("vlan_filtering", 0))}
    elif kind == "bond":
        mode = d.get("mode")
        state = {"bond_mode": BOND_MODES[mode] if mode is not None and mode < len(BOND_MODES) else None,
                 "miimon": d.get("miimon")}
    elif kind == "vlan":
        state = {"vlan_id": d.get("vlan_id"), "parent": names.get(raw.link)}
    elif kind in ("macvtap", "macvlan"):
        state = {"macvtap_mode": MACVTAP_MODES.get(d.get("macvlan_mode", 0)),
                 "parent": names.get(raw.link)}
    elif kind == "tun":
        kind = "tap" if d.get("type") == 2 else "tun"
        state = {"owner": d.get("owner"), "tap_group": d.get("group"),
                 "multi_queue": bool(d.get("multi_queue")) if "multi_queue" in d else None,
                 "vnet_hdr": bool(d.get("vnet_hdr")) if "vnet_hdr" in d else None}
    return LinkState(
        ifname=raw.ifname, kind=kind, index=raw.index, alias=raw.alias, group=raw.group,
        master=names.get(raw.master) if raw.master else None, mtu=raw.mtu, mac=raw.mac,
        up=bool(raw.flags & 1), carrier=bool(raw.flags & 0x10000),
        persist=bool(d["persist"]) if kind in ("tap", "tun") and "persist" in d else None, **state,
    )


def _bridge_vlans(ipr: IPRoute) -> dict[int, PortVlan]:
    out: dict[int, PortVlan] = {}
    for msg in ipr.get_vlans():
        spec = msg.get_attr("IFLA_AF_SPEC")
        if spec is None:
            continue
        pvid: int | None = None
        tagged: list[int] = []
        for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
            flags, vid = int(info["flags"]), int(info["vid"])
            if flags & BRIDGE_VLAN_PVID and flags & BRIDGE_VLAN_UNTAGGED:
                pvid = vid
            elif not flags & BRIDGE_VLAN_UNTAGGED:
                tagged.append(vid)
        out[msg["index"]] = PortVlan(pvid=pvid, tagged=tuple(sorted(tagged)))
    return out


def observe(with_vlans: bool = False, addresses_of: Sequence[str] | None = None) -> Observed:
    """The current links (and addresses of ``addresses_of``; all bridges when None)."""
    try:
        with Rtnl() as rtnl:
            raws = rtnl.dump_links()
    except OSError as err:
        raise HostError(f"cannot list links: {err.strerror or err}") from err
    names = {r.index: r.ifname for r in raws}
    links = [_link_state(r, names) for r in raws]
    want_addr = set(addresses_of) if addresses_of is not None else {
        link.ifname for link in links if link.kind == "bridge"}
    extra: dict[int, dict[str, Any]] = {}
    try:
        if want_addr:
            with Rtnl() as rtnl:
                for idx, addr, prefixlen in rtnl.dump_ipv4_addresses():
                    if names.get(idx) in want_addr:
                        iface = ipaddress.IPv4Interface(f"{addr}/{prefixlen}")
                        extra.setdefault(idx, {}).setdefault("addresses", []).append(iface)
        if with_vlans:
            with _iproute() as ipr:
                for idx, pv in _bridge_vlans(ipr).items():
                    extra.setdefault(idx, {})["port_vlan"] = pv
    except Exception as err:
        if not isinstance(err, OSError) and _netlink_code(err) is None:
            raise
        raise HostError(f"cannot read addresses/VLANs: {err}") from err
    out = []
    for link in links:
        more = extra.get(link.index)
        if more:
            link = LinkState(**{**link.__dict__,
                                "addresses": tuple(sorted(more.get("addresses", ()))),
                                "port_vlan": more.get("port_vlan", link.port_vlan)})
        out.append(link)
    return Observed(links=tuple(out), sysctls=read_sysctls())


def observe_links(names: Sequence[str]) -> Observed:
    """Only the named links (for one guest: its port and its bridge), without their addresses
    or VLANs: what a per-guest change needs, in one round trip instead of a full dump."""
    try:
        with Rtnl() as rtnl:
            raws = rtnl.get_links(names)
    except OSError as err:
        raise HostError(f"cannot read links {', '.join(names)}: {err.strerror or err}") from err
    index = {r.index: r.ifname for r in raws}
    return Observed(links=tuple(_link_state(r, index) for r in raws))


def bury(link: LinkState) -> None:
    """Take a port out of service now and leave its deletion to ``reap_graves``: down, off its
    bridge, renamed (its name is free again at once) and moved to the grave group."""
    with Rtnl() as rtnl, _errors(f"take {link.ifname!r} out of service"):
        rtnl.request(*Rtnl.bury_message(link.index, grave_name(link.index), GRAVE_GROUP,
                                        GRAVE_ALIAS))


def reap_graves() -> None:
    """Delete every buried link in one kernel call (a group delete costs about one delete)."""
    with Rtnl() as rtnl:
        code = rtnl.request_many([Rtnl.delgroup_message(GRAVE_GROUP)])[0]
    if code and code != errno.ENODEV:
        raise HostError(f"cannot delete buried links: {_strerror(code)}")


def link_state(raw: RawLink, names: dict[int, str]) -> LinkState:
    """A raw link (from a dump or an event) as the planner sees it."""
    return _link_state(raw, names)


class _Host:
    """State of one apply run: sockets and a name -> index cache refreshed on demand."""

    def __init__(self, undo: Undo, observed: Observed | None = None) -> None:
        self._ipr: IPRoute | None = None
        self.rtnl = Rtnl()
        self.undo: Undo = undo
        self._index: dict[str, int] = {
            link.ifname: link.index for link in (observed.links if observed else ()) if link.index}

    @property
    def ipr(self) -> IPRoute:
        """pyroute2, opened on first use (a TAP attach needs none of it)."""
        if self._ipr is None:
            self._ipr = _iproute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        self.rtnl.close()

    def index(self, ifname: str) -> int:
        if ifname not in self._index:
            for raw in self.rtnl.get_links([ifname]):  # one link, not a dump
                self._index[raw.ifname] = raw.index
        try:
            return self._index[ifname]
        except KeyError:
            raise HostError(f"link {ifname!r} does not exist") from None

    def forget(self, ifname: str) -> None:
        self._index.pop(ifname, None)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        msg = f"cannot {what}: {err.strerror or err}"
        if err.errno in (errno.EEXIST, errno.EBUSY):
            raise ConflictError(msg) from err
        raise HostError(msg) from err
    except Exception as err:
        code = _netlink_code(err)
        if code is None:
            raise
        text = str(err.args[1]) if len(err.args) > 1 and err.args[1] else _strerror(code)
        msg = f"cannot {what}: {errno.errorcode.get(code, code)} ({text})"
        if code in (errno.EEXIST, errno.EBUSY):
            raise ConflictError(msg) from err
        raise HostError(msg) from err


def _strerror(code: int) -> str:
    import os

    try:
        return os.strerror(code)
    except ValueError:
        return "unknown error"


def apply_actions(actions: Sequence[Action], undo: Undo,
                  observed: Observed | None = None) -> list[str]:
    """Perform ``actions`` in order; returns one line per action done.

    ``undo(fn)`` is called with the inverse of each step right after it succeeded.
    """
    host = _Host(undo, observed)
    done: list[str] = []
    try:
        i = 0
        while i < len(actions):
            action = actions[i]
            if action.op == "create" and action.kind == "tap":
                j = i
                while j < len(actions) and actions[j].op == "create" and actions[j].kind == "tap":
                    j += 1
                _create_taps(host, actions[i:j])
                done += [a.describe() for a in actions[i:j]]
                i = j
                continue
            if action.op == "delete":
                rest = [a for a in actions[i:] if a.op == "delete"]
                _delete_links(host, rest, observed)
                done += [a.describe() for a in rest]
                i += len(rest)
                continue
            _APPLY[action.op](host, action)
            done.append(action.describe())
            i += 1
    finally:
        host.close()
    return done


# -- creation --------------------------------------------------------------------------------


def _finish_links(host: _Host, specs: Sequence[LinkSpec]) -> None:
    """Mark (alias, group), attach (master), set MTU and bring up new links: one pipelined batch."""
    requests = []
    for s in specs:
        master = host.index(s.master) if s.master else None
        requests.append(Rtnl.setlink_message(s.ifname, up=True, master=master, group=s.group,
                                             alias=s.alias, mtu=s.mtu))
    codes = host.rtnl.request_many(requests)
    for i, (s, code) in enumerate(zip(specs, codes, strict=True)):
        if code:
            where = f" to {s.master!r}" if s.master else ""
            detail = host.rtnl.details.get(i)
            if code == errno.EXFULL and s.master:
                detail = "a Linux bridge holds at most 1,024 ports"
            raise HostError(f"cannot attach {s.kind} {s.ifname!r}{where} (network "
                            f"{s.network!r}): {_strerror(code)}" + (f" ({detail})" if detail else ""))


def _create_taps(host: _Host, actions: Sequence[Action]) -> None:
    specs = [a.spec for a in actions if a.spec is not None]
    for s in specs:
        with _errors(f"create tap {s.ifname!r} (network {s.network!r}, guest {s.guest!r})"):
            try:
                taps.create_tap(s.ifname, owner=s.owner, group=s.tap_group,
                                multi_queue=bool(s.multi_queue), vnet_hdr=bool(s.vnet_hdr))
            except OSError as err:
                if err.errno == errno.EBUSY:
                    raise ConflictError(
                        f"cannot create tap {s.ifname!r} (network {s.network!r}): "
                        "a link with that name exists and vnet did not create it") from err
                raise
        host.undo(_deleter(s.ifname))
    _finish_links(host, specs)
    for s in specs:
        if s.port_vlan is not None:
            _set_port_vlan(host, s.ifname, None, s.port_vlan)


def _deleter(ifname: str) -> Callable[[], None]:
    def delete() -> None:
        with Rtnl() as rtnl:
            rtnl.request_many([Rtnl.dellink_message(ifname)])

    return delete


def _create(host: _Host, action: Action) -> None:
    s = action.spec
    assert s is not None
    what = f"create {s.kind} {s.ifname!r} (network {s.network!r})"
    kw: dict[str, Any] = {"ifname": s.ifname}
    if s.kind == "bridge":
        kw.update(kind="bridge", br_stp_state=1 if s.stp else 0)
        if s.vlan_filtering:  # the attribute is refused on kernels without VLAN filtering
            kw["br_vlan_filtering"] = 1
        if s.mac:
            kw["address"] = s.mac
    elif s.kind == "bond":
        kw.update(kind="bond", bond_mode=BOND_MODES.index(s.bond_mode or "active-backup"),
                  bond_miimon=s.miimon or 0)
    elif s.kind == "vlan":
        assert s.parent is not None
        kw.update(kind="vlan", link=host.index(s.parent), vlan_id=s.vlan_id)
    elif s.kind == "macvtap":
        assert s.parent is not None
        kw.update(kind="macvtap", link=host.index(s.parent),
                  macvtap_mode=MACVTAP_CODES[s.macvtap_mode or "bridge"], address=s.mac)
    elif s.kind == "veth":
        peer: dict[str, Any] = {"ifname": "eth0" if s.peer_netns else s.ifname[:13] + "-p"}
        if s.peer_netns:
            peer["net_ns_fd"] = s.peer_netns
            if not Path("/run/netns", s.peer_netns).exists():
                raise HostError(f"cannot {what}: network namespace {s.peer_netns!r} does not exist")
        kw.update(kind="veth", peer=peer)
    with _errors(what):
        host.ipr.link("add", **kw)
    host.undo(_deleter(s.ifname))
    host.forget(s.ifname)
    if s.kind == "veth" and s.peer_netns:
        _setup_veth_peer(s)
    _finish_links(host, [s])
    if s.addresses:
        idx = host.index(s.ifname)
        for addr in s.addresses:
            with _errors(f"add address {addr} to {s.ifname!r}"):
                host.ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
    if s.port_vlan is not None:
        _set_port_vlan(host, s.ifname, None, s.port_vlan)


def _setup_veth_peer(s: LinkSpec) -> None:
    """Give the namespace end the guest's MAC and bring it up."""
    mac = s.peer_mac
    assert s.peer_netns is not None
    with _errors(f"configure eth0 of guest {s.guest!r} in netns {s.peer_netns!r}"), \
            _iproute(netns=s.peer_netns, flags=0) as peer:
        idx = peer.link_lookup(ifname="eth0")[0]
        kw: dict[str, Any] = {"index": idx, "state": "up"}
        if mac:
            kw["address"] = mac
        if s.mtu:
            kw["mtu"] = s.mtu
        peer.link("set", **kw)


def _set_port_vlan(host: _Host, ifname: str, old: PortVlan | None, new: PortVlan | None) -> None:
    idx = host.index(ifname)
    what = f"set VLANs of port {ifname!r}"

    def entries(v: PortVlan | None) -> set[tuple[int, int]]:
        if v is None:
            return set()
        out = {(t, 0) for t in v.tagged}
        if v.pvid:
            out.add((v.pvid, BRIDGE_VLAN_PVID | BRIDGE_VLAN_UNTAGGED))
        return out

    before, after = entries(old if old is not None else PortVlan(pvid=1)), entries(new)
    with _errors(what):
        for vid, flags in sorted(before - after):
            if (vid, flags) not in after:
                try:
                    host.ipr.vlan_filter("del", index=idx, vlan_info={"vid": vid})
                except Exception as err:  # already gone is fine
                    if _netlink_code(err) is None:
                        raise
        for vid, flags in sorted(after - before):
            host.ipr.vlan_filter("add", index=idx, vlan_info={"vid": vid, "flags": flags})


# -- modification ----------------------------------------------------------------------------


def _modify(host: _Host, action: Action) -> None:
    s = action.spec
    assert s is not None
    for key, old, new in action.changes:
        _change(host, s, key, old, new)
        host.undo(_reverter(s, key, old, new))


def _adopt(host: _Host, action: Action) -> None:
    """Mark a TAP someone else made as the guest's port; attach it and bring it up."""
    s, old = action.spec, action.old
    assert s is not None
    assert old is not None
    old_master = host.index(old.master) if old.master else 0

    def unmark() -> None:
        with Rtnl() as rtnl:
            rtnl.request_many([Rtnl.setlink_message(s.ifname, master=old_master, group=old.group,
                                                    alias=old.alias or "")])

    host.undo(unmark)
    _finish_links(host, [s])


def _reverter(s: LinkSpec, key: str, old: object, new: object) -> Callable[[], None]:
    def revert() -> None:
        host = _Host(lambda fn: None)
        try:
            _change(host, s, key, new, old)
        finally:
            host.close()

    return revert


def _change(host: _Host, s: LinkSpec, key: str, old: object, new: object) -> None:
    what = f"change {key} of {s.kind} {s.ifname!r} (network {s.network!r}) to {new}"
    idx = host.index(s.ifname)
    with _errors(what):
        if key == "master":
            master = host.index(str(new)) if new else 0
            host.rtnl.request(*Rtnl.setlink_message(s.ifname, master=master))
        elif key == "mtu":
            host.ipr.link("set", index=idx, mtu=new)
        elif key == "mac":
            host.ipr.link("set", index=idx, address=new)
        elif key == "stp":
            host.ipr.link("set", index=idx, kind="bridge", br_stp_state=1 if new else 0)
        elif key == "vlan-filtering":
            host.ipr.link("set", index=idx, kind="bridge", br_vlan_filtering=1 if new else 0)
        elif key == "miimon":
            host.ipr.link("set", index=idx, kind="bond", bond_miimon=new)
        elif key == "macvtap-mode":
            host.ipr.link("set", index=idx, kind="macvtap", macvtap_mode=MACVTAP_CODES[str(new)])
        elif key in ("owner", "group"):
            value = new if isinstance(new, int) else None
            taps.set_tap_ids(s.ifname, owner=value if key == "owner" else None,
                             group=value if key == "group" else None,
                             multi_queue=bool(s.multi_queue), vnet_hdr=bool(s.vnet_hdr))
        elif key == "vlan":
            _set_port_vlan(host, s.ifname, old if isinstance(old, PortVlan) else None,
                           new if isinstance(new, PortVlan) else None)
        elif key == "addresses":
            olds = set(old) if isinstance(old, tuple) else set()
            news = set(new) if isinstance(new, tuple) else set()
            for a in sorted(olds - news):
                host.ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            for a in sorted(news - olds):
                host.ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        elif key == "state":
            host.ipr.link("set", index=idx, state=str(new))
        else:  # pragma: no cover - plan and host disagree
            raise HostError(f"cannot {what}: vnet does not know how")


def _replace(host: _Host, action: Action) -> None:
    assert action.spec is not None
    with _errors(f"delete {action.kind} {action.ifname!r} to recreate it"):
        host.rtnl.request(*Rtnl.dellink_message(action.ifname))
    host.forget(action.ifname)
    create = Action("create", action.ifname, action.network, action.kind, action.spec)
    if action.kind == "tap":
        _create_taps(host, [create])
    else:
        _create(host, create)


def _enslave(host: _Host, action: Action) -> None:
    cur = action.old
    assert cur is not None
    what = f"enslave {action.ifname!r} to {action.value!r} (network {action.network!r})"
    if cur.master != action.value:
        master = host.index(action.value)
        old_master = host.index(cur.master) if cur.master else 0
        was_up = cur.up

        def release() -> None:
            with Rtnl() as rtnl:
                rtnl.request_many([Rtnl.setlink_message(action.ifname, master=old_master),
                                   Rtnl.setlink_message(action.ifname, up=was_up)])

        # Registered first: a failure half-way (taken down, then refused) is undone too.
        host.undo(release)
        with _errors(what):
            # Separate messages: the kernel applies flags before IFLA_MASTER, and bonding refuses
            # a device that is up ("Device can not be enslaved while up").
            if action.spec is not None and action.spec.role == "bond-member":
                host.rtnl.request(*Rtnl.setlink_message(action.ifname, up=False))
            host.rtnl.request(*Rtnl.setlink_message(action.ifname, master=master))
            host.rtnl.request(*Rtnl.setlink_message(action.ifname, up=True))
    for key, old, new in action.changes:
        if key == "vlan":
            _set_port_vlan(host, action.ifname, old if isinstance(old, PortVlan) else None,
                           new if isinstance(new, PortVlan) else None)


def _sysctl(host: _Host, action: Action) -> None:
    path = _sysctl_path(action.ifname)
    with _errors(f"set sysctl {action.ifname}"):
        old = path.read_text().strip()
        path.write_text(action.value + "\n")

    def restore() -> None:
        path.write_text(old + "\n")

    host.undo(restore)


def _delete_links(host: _Host, actions: Sequence[Action], observed: Observed | None) -> None:
    """Delete owned links: a whole link group at once when the group holds only these links."""
    names = {a.ifname for a in actions}
    requests = []
    by_group: dict[int, set[str]] = {}
    if observed is not None:
        for link in observed.links:
            by_group.setdefault(link.group, set()).add(link.ifname)
    groups_done: set[int] = set()
    for a in actions:
        group = a.old.group if a.old is not None else 0
        if group and group not in groups_done and by_group.get(group, set()) <= names:
            groups_done.add(group)
            requests.append(Rtnl.delgroup_message(group))
    covered = {n for g in groups_done for n in by_group[g]}
    requests += [Rtnl.dellink_message(a.ifname) for a in actions if a.ifname not in covered]
    codes = host.rtnl.request_many(requests)
    failed = [(i, c) for i, c in enumerate(codes) if c and c != errno.ENODEV]
    if failed:
        i, code = failed[0]
        detail = host.rtnl.details.get(i)
        raise HostError(f"cannot delete links: {_strerror(code)}" + (f" ({detail})" if detail else ""))


_APPLY: dict[str, Callable[[_Host, Action], None]] = {
    "create": _create,
    "modify": _modify,
    "adopt": _adopt,
    "replace": _replace,
    "enslave": _enslave,
    "sysctl": _sysctl,
}

__all__ = ["NetlinkError", "apply_actions", "bury", "link_state", "observe", "observe_links", "read_sysctls",
           "reap_graves"]
