"""The L2 data plane on a real kernel, each test in its own "host" namespace.

Every test ends with: plan is empty after apply, and down leaves no vnet link (foreign links
survive both). Assertions read the kernel with ``ip -j -d link``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VNET, NetnsFactory, ns_exec, sh

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


class Vnet:
    """Runs the real ``vnet`` CLI inside a namespace with its own dirs."""

    def __init__(self, ns: str, root: Path) -> None:
        self.ns = ns
        self.config = root / "networks"
        self.config.mkdir()
        self.dirs = ["--config-dir", str(self.config), "--state-dir", str(root / "state"),
                     "--run-dir", str(root / "run"), "--policy-dir", str(root / "policies")]

    def write(self, name: str, text: str) -> None:
        (self.config / f"{name}.yaml").write_text(text)

    def __call__(self, *args: str, check: bool = True) -> Any:
        return ns_exec(self.ns, VNET, *self.dirs, *args, check=check)

    def links(self) -> dict[str, dict[str, Any]]:
        out = ns_exec(self.ns, "ip", "-j", "-d", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def owned(self) -> list[str]:
        return sorted(n for n, link in self.links().items() if link.get("ifalias", "").startswith("vnet:"))

    def assert_converged(self) -> None:
        assert self("plan").stdout.strip() == "no changes"
        assert self("apply").stdout.strip() == "no changes"

    def assert_down_clean(self, foreign: list[str]) -> None:
        self("down")
        assert self.owned() == []
        assert ns_exec(self.ns, "nft", "list", "tables").stdout.strip() == ""
        links = self.links()
        for name in foreign:
            assert name in links, f"foreign link {name} was removed"


@pytest.fixture
def vnet(host_ns: str, tmp_path: Path) -> Vnet:
    return Vnet(host_ns, tmp_path)


LAB = """
name: lab
mode: nat
bridge: {name: vn-lab, stp: false, mtu: 1500}
uplink: eth1
ipv4: {address: 10.77.0.1/24}
guests:
  - {name: web1, mac: "52:54:00:00:00:10"}
  - {name: db1, mac: "52:54:00:00:00:11", port: tap, owner: 4242, multi-queue: true}
"""


def add_foreign(ns: str) -> list[str]:
    """Links the test made itself (unmarked): vnet must never touch them."""
    sh("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    sh("ip", "-n", ns, "link", "add", "docker0", "type", "bridge")
    sh("ip", "-n", ns, "tuntap", "add", "tap-foreign", "mode", "tap")
    sh("ip", "-n", ns, "link", "set", "tap-foreign", "master", "docker0")
    return ["eth1", "eth1-peer", "docker0", "tap-foreign"]


def test_apply_builds_bridge_and_taps_then_converges(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    vnet.write("lab", LAB)
    out = vnet("apply").stdout
    assert "create bridge vn-lab" in out
    assert "create tap lab-db1" in out
    links = vnet.links()
    br = links["vn-lab"]
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert br["mtu"] == 1500
    assert br["ifalias"] == "vnet:lab:bridge"
    for name, guest in (("lab-web1", "web1"), ("lab-db1", "db1")):
        port = links[name]
        assert port["linkinfo"]["info_kind"] == "tun"
        assert port["master"] == "vn-lab"
        assert port["ifalias"] == f"vnet:lab:port:{guest}"
        assert "UP" in port["flags"]
    db1 = links["lab-db1"]["linkinfo"]["info_data"]
    assert db1["type"] == "tap"
    assert db1["multi_queue"] is True
    assert db1["user"] == 4242
    addrs = json.loads(ns_exec(vnet.ns, "ip", "-j", "addr", "show", "vn-lab").stdout)
    assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"] if a["family"] == "inet"] == [
        ("10.77.0.1", 24)]
    assert ns_exec(vnet.ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert links["tap-foreign"]["master"] == "docker0"
    vnet.assert_converged()
    vnet.assert_down_clean(foreign)


def test_changing_a_key_plans_exactly_that_modification(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    vnet.write("lab", LAB)
    vnet("apply")
    changed = LAB.replace("mtu: 1500", "mtu: 1400").replace(", owner: 4242", ", owner: 4243")
    vnet.write("lab", changed)
    plan = vnet("plan").stdout.strip().splitlines()
    assert plan == [
        "modify bridge vn-lab (network lab): mtu 1500 -> 1400",
        "modify tap lab-web1 (network lab, guest web1): mtu 1500 -> 1400",
        "modify tap lab-db1 (network lab, guest db1): mtu 1500 -> 1400, owner 4242 -> 4243",
    ]
    vnet("apply")
    links = vnet.links()
    assert links["vn-lab"]["mtu"] == 1400
    assert links["lab-web1"]["mtu"] == 1400
    assert links["lab-db1"]["linkinfo"]["info_data"]["user"] == 4243
    # A removed guest is deleted, the rest stays.
    vnet.write("lab", changed.replace('  - {name: web1, mac: "52:54:00:00:00:10"}\n', ""))
    done = vnet("apply").stdout.strip().splitlines()
    assert done[0] == "delete tap lab-web1 (network lab)"
    assert all(line.startswith(("replace nftables tables", "update nftables elements"))
               for line in done[1:])
    assert "lab-web1" not in vnet.links()
    vnet.assert_converged()
    vnet.assert_down_clean(foreign)


def test_veth_guests_land_in_their_namespace_and_reach_each_other(
        vnet: Vnet, netns_factory: NetnsFactory) -> None:
    sh("ip", "-n", vnet.ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    guests = [netns_factory("g"), netns_factory("g")]
    vnet.write("lab", f"""
name: lab
mode: isolated
ipv4: {{address: 10.77.0.1/24}}
guests:
  - {{name: c1, mac: "52:54:00:00:00:31", port: veth, netns: {guests[0]}}}
  - {{name: c2, mac: "52:54:00:00:00:32", port: veth, netns: {guests[1]}}}
""")
    vnet("apply")
    for i, g in enumerate(guests):
        eth0 = json.loads(ns_exec(g, "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert eth0["address"] == f"52:54:00:00:00:3{i + 1}"
        assert "UP" in eth0["flags"]
        ns_exec(g, "ip", "addr", "add", f"10.77.0.{50 + i}/24", "dev", "eth0")
    ns_exec(guests[0], "ping", "-c", "1", "-W", "2", "10.77.0.51")
    vnet.assert_converged()
    vnet.assert_down_clean(["eth1"])
    # The pair is gone from the guest's namespace too.
    assert ns_exec(guests[0], "ip", "link", "show", "eth0", check=False).returncode != 0


def test_failure_part_way_undoes_everything(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    vnet.write("lab", LAB + '  - {name: ct9, mac: "52:54:00:00:00:19", port: veth, netns: vnet-no-such-ns}\n')
    before = vnet.links()
    res = vnet("apply", check=False)
    assert res.returncode == 1
    assert "network namespace 'vnet-no-such-ns' does not exist" in res.stderr
    assert vnet.links().keys() == before.keys()
    assert vnet.owned() == []
    for name in foreign:
        assert name in vnet.links()


def test_conflicts_and_missing_members_change_nothing(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    sh("ip", "-n", vnet.ns, "link", "add", "lab-web1", "type", "bridge")  # foreign holder of a name
    vnet.write("lab", LAB)
    res = vnet("apply", check=False)
    assert res.returncode == 1
    assert "cannot create tap 'lab-web1': the name is held by a bridge created by something else" in res.stderr
    assert vnet.owned() == []
    sh("ip", "-n", vnet.ns, "link", "del", "lab-web1")
    vnet.write("lab", LAB.replace("uplink: eth1", "uplink: eth7"))
    res = vnet("apply", check=False)
    assert res.returncode == 1
    assert "network 'lab': uplink 'eth7' does not exist" in res.stderr
    assert vnet.owned() == []
    for name in foreign:
        assert name in vnet.links()


def test_missing_kernel_features_are_refused_by_name(vnet: Vnet) -> None:
    """This host kernel lacks bonding, 8021q and bridge VLAN filtering (the guest tier has them)."""
    from vnet.host.caps import has_feature

    if has_feature("bond") and has_feature("vlan"):
        pytest.skip("this kernel has bonding and 8021q; the refusal path cannot be exercised")
    add_foreign(vnet.ns)
    sh("ip", "-n", vnet.ns, "link", "add", "eth2", "type", "veth", "peer", "name", "eth2-peer")
    vnet.write("prod", (EXAMPLES / "prod.yaml").read_text())
    before = vnet.links()
    res = vnet("apply", check=False)
    assert res.returncode == 1
    assert "network 'prod'" in res.stderr
    assert "uplink.bond needs bonding, which this kernel does not provide" in res.stderr
    assert "uplink.vlan needs 802.1Q VLAN devices (8021q)" in res.stderr
    assert "bridge.vlan-filtering needs bridge VLAN filtering" in res.stderr
    assert vnet.links().keys() == before.keys()
    assert vnet("plan", check=False).returncode == 1


def test_macvtap_network_gives_each_guest_its_mac(vnet: Vnet) -> None:
    sh("ip", "-n", vnet.ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    sh("ip", "-n", vnet.ns, "link", "set", "eth1", "up")
    vnet.write("direct", (EXAMPLES / "direct.yaml").read_text())
    vnet("apply")
    g1 = vnet.links()["direct-g1"]
    assert g1["linkinfo"]["info_kind"] == "macvtap"
    assert g1["linkinfo"]["info_data"]["mode"] == "bridge"
    assert g1["address"] == "52:54:00:00:02:01"
    assert g1["link"] == "eth1"
    vnet.write("direct", (EXAMPLES / "direct.yaml").read_text().replace("{mode: bridge}", "{mode: vepa}"))
    assert vnet("plan").stdout.strip() == (
        "modify macvtap direct-g1 (network direct, guest g1): macvtap-mode bridge -> vepa")
    vnet("apply")
    assert vnet.links()["direct-g1"]["linkinfo"]["info_data"]["mode"] == "vepa"
    vnet.assert_converged()
    vnet.assert_down_clean(["eth1", "eth1-peer"])


def test_status_reports_ports_and_drift(vnet: Vnet) -> None:
    add_foreign(vnet.ns)
    vnet.write("lab", LAB)
    vnet("apply")
    status = json.loads(vnet("status", "--json").stdout)
    assert status["daemon"] is None
    data = status["networks"]
    assert data[0]["state"] == "in sync"
    assert {p["ifname"]: p["state"] for p in data[0]["ports"]} == {"lab-web1": "up", "lab-db1": "up"}
    sh("ip", "-n", vnet.ns, "link", "set", "lab-web1", "down")
    data = json.loads(vnet("status", "--json").stdout)["networks"]
    assert data[0]["state"] == "1 change(s) pending"
    assert "modify tap lab-web1 (network lab, guest web1): state down -> up" in vnet("plan").stdout
    vnet("apply")
    vnet.assert_converged()
    vnet.assert_down_clean(["eth1"])


def test_adding_a_guest_changes_elements_not_the_ruleset(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    filtered = LAB.replace("ipv4: {address: 10.77.0.1/24}",
                           "ipv4: {address: 10.77.0.1/24}\npolicies: [clean-traffic]")
    vnet.write("lab", filtered)
    assert "replace nftables tables" in vnet("apply").stdout
    handles = ns_exec(vnet.ns, "nft", "-a", "list", "chain", "inet", "vnet", "forward").stdout
    assert "handle" in handles
    vnet.write("lab", filtered + '  - {name: web2, mac: "52:54:00:00:00:12"}\n')
    plan = vnet("plan").stdout.strip().splitlines()
    assert plan[0] == "create tap lab-web2 (network lab, guest web2): master vn-lab, mtu 1500"
    assert plan[1].startswith("update nftables elements (")
    vnet("apply")
    after = ns_exec(vnet.ns, "nft", "-a", "list", "chain", "inet", "vnet", "forward").stdout
    assert after == handles  # same rules, same handles: no table replacement
    vnet.assert_converged()
    vnet.assert_down_clean(foreign)


def test_lab_example_applies_as_documented(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    vnet.write("lab", (EXAMPLES / "lab.yaml").read_text())
    vnet("apply")
    links = vnet.links()
    assert links["vn-lab"]["mtu"] == 1500
    assert {links[p]["master"] for p in ("lab-web1", "lab-db1")} == {"vn-lab"}
    assert "vnet" in ns_exec(vnet.ns, "nft", "list", "tables").stdout
    vnet.assert_converged()
    vnet.assert_down_clean(foreign)


def test_bridge_mode_enslaves_the_uplink_and_releases_it(vnet: Vnet) -> None:
    foreign = add_foreign(vnet.ns)
    vnet.write("br", 'name: br\nmode: bridge\nuplink: eth1\nguests: [{name: g1, mac: "52:54:00:00:07:01"}]\n')
    assert "enslave eth1 to vn-br (network br)" in vnet("apply").stdout
    links = vnet.links()
    assert links["eth1"]["master"] == "vn-br"
    assert links["br-g1"]["master"] == "vn-br"
    assert "ifalias" not in links["eth1"]  # enslaved, never marked as vnet's
    vnet.assert_converged()
    vnet.assert_down_clean(foreign)
    assert "master" not in vnet.links()["eth1"]
