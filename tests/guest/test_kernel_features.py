"""Smoke test of the guest kernel: VLAN, bonding and bridge VLAN filtering work here.

Plain ``ip``/``bridge`` commands in a namespace of the guest, no vnet code: if these fail,
the guest image is broken, not vnet.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import NetnsFactory, ns_exec

pytestmark = pytest.mark.guest


def link(ns: str, name: str) -> dict[str, Any]:
    out = ns_exec(ns, "ip", "-j", "-d", "link", "show", "dev", name).stdout
    entry: dict[str, Any] = json.loads(out)[0]
    return entry


def test_bond_vlan_and_vlan_filtering_bridge(netns_factory: NetnsFactory) -> None:
    ns = netns_factory("k")
    for cmd in (
        "link add bond0 type bond mode 802.3ad miimon 100",
        "link add eth1 type veth peer name eth1p",
        "link set eth1 master bond0",
        "link add link bond0 name bond0.42 type vlan id 42",
        "link add br0 type bridge vlan_filtering 1",
        "link set bond0.42 master br0",
        "link add tap0 type veth peer name tap0p",
        "link set tap0 master br0",
    ):
        ns_exec(ns, "ip", *cmd.split())
    ns_exec(ns, "bridge", "vlan", "add", "dev", "tap0", "vid", "10", "pvid", "untagged")
    ns_exec(ns, "bridge", "vlan", "del", "dev", "tap0", "vid", "1")

    bond = link(ns, "bond0")["linkinfo"]
    assert (bond["info_kind"], bond["info_data"]["mode"]) == ("bond", "802.3ad")
    assert bond["info_data"]["miimon"] == 100
    assert link(ns, "eth1")["master"] == "bond0"
    vlan = link(ns, "bond0.42")
    assert (vlan["linkinfo"]["info_kind"], vlan["linkinfo"]["info_data"]["id"]) == ("vlan", 42)
    assert vlan["master"] == "br0"
    assert link(ns, "br0")["linkinfo"]["info_data"]["vlan_filtering"] == 1

    ports = {p["ifname"]: p["vlans"] for p in json.loads(ns_exec(ns, "bridge", "-j", "vlan",
                                                                  "show").stdout)}
    assert ports["tap0"] == [{"vlan": 10, "flags": ["PVID", "Egress Untagged"]}]
