"""Kernel capability detection, before any change is made.

Features are probed for real in a throwaway network namespace: one forked child unshares its
network namespace and tries to create what each feature needs, so the probe cannot disturb the
host and also works where the feature is a module the kernel would autoload. The child speaks
raw rtnetlink (``vnet.host.rtnl``), never pyroute2, whose import alone costs seconds in a slow
guest. Results are cached per process; all features a command needs are probed in one child.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
from collections.abc import Iterable

from vnet.host.rtnl import Rtnl, u8_attr, u16_attr

CLONE_NEWNET = 0x40000000
IFLA_BR_VLAN_FILTERING = 7
IFLA_VLAN_ID = 1

# feature -> what a user reads in the error message
FEATURES = {
    "vlan": "802.1Q VLAN devices (8021q)",
    "bond": "bonding",
    "bridge-vlan-filtering": "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
    "macvtap": "macvtap",
    "tun": "TUN/TAP (/dev/net/tun)",
    "veth": "veth",
}

_cache: dict[str, bool] = {}


def _probe(rtnl: Rtnl, feature: str) -> bool:
    """Create what ``feature`` needs; only ever called in the throwaway namespace."""
    try:
        if feature == "bond":
            rtnl.newlink("vnprobe-bond", "bond")
        elif feature == "bridge-vlan-filtering":
            rtnl.newlink("vnprobe-br", "bridge", data=u8_attr(IFLA_BR_VLAN_FILTERING, 1))
            link = next(r for r in rtnl.dump_links() if r.ifname == "vnprobe-br")
            return bool(link.data.get("vlan_filtering"))
        elif feature in ("veth", "vlan", "macvtap"):
            if not any(r.ifname == "vnprobe0" for r in rtnl.dump_links()):
                rtnl.newlink("vnprobe0", "veth", peer="vnprobe1")
            parent = next(r.index for r in rtnl.dump_links() if r.ifname == "vnprobe0")
            if feature == "vlan":
                rtnl.newlink("vnprobe0.5", "vlan", link=parent, data=u16_attr(IFLA_VLAN_ID, 5))
            elif feature == "macvtap":
                rtnl.newlink("vnprobe-mvt", "macvtap", link=parent)
        else:
            return False
    except OSError:
        return False
    return True


def _probe_all_in_child(features: list[str]) -> dict[str, bool]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller
        try:
            os.close(read_fd)
            result: dict[str, bool] = dict.fromkeys(features, False)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) == 0:
                with Rtnl() as rtnl:
                    result = {f: _probe(rtnl, f) for f in features}
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    with contextlib.closing(os.fdopen(read_fd, "rb")) as reader:
        chunks.append(reader.read())
    os.waitpid(pid, 0)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        data = {}
    return {f: bool(data.get(f, False)) for f in features}


def probe(features: Iterable[str]) -> None:
    """Probe every feature not known yet, all in one child."""
    todo = sorted({f for f in features if f not in _cache})
    if "tun" in todo:
        _cache["tun"] = os.path.exists("/dev/net/tun")
        todo.remove("tun")
    if todo:
        _cache.update(_probe_all_in_child(todo))


def has_feature(feature: str) -> bool:
    probe([feature])
    return _cache[feature]
