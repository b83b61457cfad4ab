"""vnet's L2 data plane where the kernel has 8021q, bonding and bridge VLAN filtering.

Runs in the guest tier only (see conftest.py). Drives the real CLI inside a namespace of the
guest with docs/examples/prod.yaml (a bond of two foreign NICs, a tagged uplink, a
VLAN-filtering bridge, an access port and a trunk port) and asserts what the kernel then has,
with ``ip -j -d link`` and ``bridge -j vlan show``. Each ``vnet`` run costs seconds under TCG,
so one scenario walks the whole life cycle: apply, no-change plan, a targeted change, down.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VNET, NetnsFactory, ns_exec
from vnet.naming import default_port_ifname

pytestmark = pytest.mark.guest

PROD = REPO / "docs" / "examples" / "prod.yaml"
FOREIGN = ("eth1", "eth1p", "eth2", "eth2p")  # the test's own "NICs": unmarked veth pairs
UNTAGGED_PVID = ["Egress Untagged", "PVID"]  # sorted flags


class Vnet:
    """The ``vnet`` CLI run inside one namespace with its own config/state/run dirs."""

    def __init__(self, ns: str, root: Path) -> None:
        self.ns = ns
        self.config = root / "networks"
        for name in ("networks", "state", "run"):
            (root / name).mkdir()
        self.dirs = ["--config-dir", str(root / "networks"), "--state-dir", str(root / "state"),
                     "--run-dir", str(root / "run")]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run and require success (the failure message carries vnet's output)."""
        return ns_exec(self.ns, VNET, *self.dirs, *args, timeout=180)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run and return whatever happened."""
        return ns_exec(self.ns, VNET, *self.dirs, *args, timeout=180, check=False)


def links(ns: str) -> dict[str, dict[str, Any]]:
    out = ns_exec(ns, "ip", "-j", "-d", "link", "show").stdout
    return {link["ifname"]: link for link in json.loads(out)}


def info(link: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    linkinfo = link.get("linkinfo", {})
    return linkinfo.get("info_kind", ""), linkinfo.get("info_data", {})


def port_vlans(ns: str) -> dict[str, dict[int, list[str]]]:
    out = ns_exec(ns, "bridge", "-j", "vlan", "show").stdout
    return {
        port["ifname"]: {v["vlan"]: sorted(v.get("flags", [])) for v in port["vlans"]}
        for port in json.loads(out)
    }


@pytest.mark.timeout(480)
def test_prod_bond_vlan_filtering_life_cycle(netns_factory: NetnsFactory, tmp_path: Path) -> None:
    ns = netns_factory("p")
    for nic in ("eth1", "eth2"):
        ns_exec(ns, "ip", "link", "add", nic, "type", "veth", "peer", "name", f"{nic}p")
        ns_exec(ns, "ip", "link", "set", nic, "up")  # NICs about to join a bond are often up
    vnet = Vnet(ns, tmp_path)
    definition = PROD.read_text()
    (vnet.config / "prod.yaml").write_text(definition)
    app1, fw1 = default_port_ifname("prod", "app1"), default_port_ifname("prod", "fw1")

    vnet("apply")

    now = links(ns)
    kind, bond = info(now["bond0"])
    assert (kind, bond["mode"], bond["miimon"]) == ("bond", "802.3ad", 100)
    assert (now["eth1"].get("master"), now["eth2"].get("master")) == ("bond0", "bond0")
    kind, vlan = info(now["bond0.42"])
    assert (kind, vlan["id"], now["bond0.42"]["link"]) == ("vlan", 42, "bond0")
    assert now["bond0.42"]["master"] == "vn-prod"
    kind, bridge = info(now["vn-prod"])
    assert (kind, bridge["vlan_filtering"]) == ("bridge", 1)
    assert (now[app1]["master"], now[fw1]["master"]) == ("vn-prod", "vn-prod")
    vlans = port_vlans(ns)
    assert vlans[app1] == {10: UNTAGGED_PVID}
    assert vlans[fw1] == {1: UNTAGGED_PVID, 10: [], 20: [], 30: []}
    assert vlans["bond0.42"] == {1: UNTAGGED_PVID, 10: [], 20: [], 30: []}  # the guests' VLANs

    assert vnet("plan").stdout.strip() == "no changes"

    # app1 moves to VLAN 20, which fw1 still trunks: the uplink's VLAN set stays the same.
    changed = definition.replace("miimon: 100", "miimon: 200").replace(
        '"52:54:00:00:01:01", vlan: 10}', '"52:54:00:00:01:01", vlan: 20}'
    )
    assert changed.count("miimon: 200") == changed.count("vlan: 20}") == 1  # the edit took
    (vnet.config / "prod.yaml").write_text(changed)
    planned = json.loads(vnet("plan", "--json").stdout)
    assert sorted((a["ifname"], sorted(a.get("changes", {}))) for a in planned) == [
        ("bond0", ["miimon"]),
        (app1, ["vlan"]),
    ], planned

    vnet("apply")

    now = links(ns)
    assert info(now["bond0"])[1]["miimon"] == 200
    assert port_vlans(ns)[app1] == {20: UNTAGGED_PVID}
    assert vnet("plan").stdout.strip() == "no changes"

    vnet("down")

    left = links(ns)
    assert sorted(left) == sorted(["lo", *FOREIGN])
    assert all("master" not in left[nic] for nic in ("eth1", "eth2")), left


@pytest.mark.timeout(240)
def test_failed_apply_undoes_its_changes(netns_factory: NetnsFactory, tmp_path: Path) -> None:
    """The kernel refuses the second bond member part-way: nothing vnet did is left behind.

    eth2 is a TUN device (no Ethernet header): bonding refuses to mix it with eth1 only once
    eth1 is already enslaved, so the apply has created bond0 and enslaved eth1 by then.
    """
    ns = netns_factory("u")
    ns_exec(ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    ns_exec(ns, "ip", "link", "set", "eth1", "up")
    ns_exec(ns, "ip", "tuntap", "add", "eth2", "mode", "tun")
    vnet = Vnet(ns, tmp_path)
    (vnet.config / "prod.yaml").write_text(PROD.read_text())
    before = links(ns)

    failed = vnet.run("apply")

    assert failed.returncode == 1, failed
    assert "eth2" in failed.stderr, failed.stderr
    after = links(ns)
    assert sorted(after) == sorted(before)  # bond0 and everything after it are gone
    assert "master" not in after["eth1"]
    assert (after["eth1"]["flags"], after["eth1"]["address"]) == (
        before["eth1"]["flags"], before["eth1"]["address"]
    )  # released, up again, its own MAC back
