"""The pure planner: desired links from definitions, diffed against observed kernel state."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from vnet.config import load_model
from vnet.model import Model
from vnet.naming import alias, link_group
from vnet.plan import (
    LinkSpec,
    LinkState,
    Observed,
    PlanConflict,
    desired_model,
    plan,
    plan_down,
)

GOLDEN = Path(__file__).parent / "plan_cases"


def lab_model(tmp_path: Path, extra: str = "") -> Model:
    (tmp_path / "lab.yaml").write_text(
        "name: lab\nmode: nat\nbridge: {name: vn-lab, mtu: 1500}\nuplink: eth1\n"
        "ipv4: {address: 10.77.0.1/24}\n"
        "guests:\n"
        "  - {name: web1, mac: '52:54:00:00:00:10'}\n"
        "  - {name: ct1, mac: '52:54:00:00:00:11', port: veth, netns: ct1}\n" + extra
    )
    return load_model(tmp_path)


def as_observed(spec: LinkSpec) -> LinkState:
    """What the kernel would report for a link made exactly to ``spec``."""
    return LinkState(
        ifname=spec.ifname, kind=spec.kind, alias=spec.alias, group=spec.group, master=spec.master,
        mtu=spec.mtu or 1500, mac=spec.mac or "", up=True, stp=spec.stp,
        vlan_filtering=spec.vlan_filtering, owner=spec.owner, tap_group=spec.tap_group,
        multi_queue=spec.multi_queue, vnet_hdr=spec.vnet_hdr, addresses=spec.addresses,
        parent=spec.parent, vlan_id=spec.vlan_id, macvtap_mode=spec.macvtap_mode,
        bond_mode=spec.bond_mode, miimon=spec.miimon,
    )


ETH1 = LinkState(ifname="eth1", kind="veth", up=True)
FORWARD_ON = (("net.ipv4.ip_forward", "1"),)


def converged(model: Model) -> Observed:
    desired = desired_model(model.networks)
    return Observed(links=(ETH1, *(as_observed(s) for s in desired.links)), sysctls=FORWARD_ON)


def test_fresh_host_plans_parents_first(tmp_path: Path) -> None:
    actions = plan(desired_model(lab_model(tmp_path).networks), Observed(links=(ETH1,)))
    got = "\n".join(a.describe() for a in actions) + "\n"
    assert got == (
        "create bridge vn-lab (network lab): mtu 1500, address 10.77.0.1/24\n"
        "create tap lab-web1 (network lab, guest web1): master vn-lab, mtu 1500\n"
        "create veth lab-ct1 (network lab, guest ct1): master vn-lab, mtu 1500, peer-netns ct1\n"
        "sysctl net.ipv4.ip_forward = 1 (network lab)\n"
    )


def test_converged_host_plans_nothing(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    assert plan(desired_model(model.networks), converged(model)) == []


def test_changed_mtu_plans_exactly_that(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    observed = converged(model)
    bigger = Model(networks=(replace(model.networks[0], bridge=replace(
        model.networks[0].bridge, mtu=9000)),))  # type: ignore[type-var]
    actions = plan(desired_model(bigger.networks), observed)
    assert [(a.op, a.ifname, a.changes) for a in actions] == [
        ("modify", "vn-lab", (("mtu", 1500, 9000),)),
        ("modify", "lab-web1", (("mtu", 1500, 9000),)),
        ("modify", "lab-ct1", (("mtu", 1500, 9000),)),
    ]


def test_removed_guest_is_deleted_children_first(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    observed = converged(model)
    fewer = Model(networks=(replace(model.networks[0], guests=()),))
    actions = plan(desired_model(fewer.networks), observed)
    assert [(a.op, a.ifname) for a in actions] == [("delete", "lab-ct1"), ("delete", "lab-web1")]
    down = plan_down(observed, ["lab"])
    assert [a.ifname for a in down] == ["lab-ct1", "lab-web1", "vn-lab"]


def test_foreign_link_holding_a_name_is_a_conflict(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    foreign = LinkState(ifname="lab-web1", kind="veth", up=True)
    with pytest.raises(PlanConflict, match="cannot create tap 'lab-web1': the name is held by a veth "
                                           "created by something else"):
        plan(desired_model(model.networks), Observed(links=(ETH1, foreign)))


def test_a_tap_qemu_made_with_the_guests_ifname_is_adopted_not_recreated(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    held = LinkState(ifname="lab-web1", kind="tap", up=False, persist=False, vnet_hdr=False,
                     multi_queue=True)
    actions = plan(desired_model(model.networks), Observed(links=(ETH1, held)))
    adopt = [a for a in actions if a.ifname == "lab-web1"]
    assert [(a.op, a.spec.master if a.spec else None) for a in adopt] == [("adopt", "vn-lab")]
    assert "made by something else (QEMU, libvirt)" in adopt[0].describe()
    # Once marked it is the guest's port: its flags are QEMU's business, never a replace.
    spec = next(s for s in desired_model(model.networks).links if s.ifname == "lab-web1")
    marked = replace(held, alias=spec.alias, group=spec.group, master="vn-lab", up=True, mtu=1500)
    again = plan(desired_model(model.networks), Observed(links=(ETH1, marked)))
    assert [a for a in again if a.ifname == "lab-web1"] == []


def test_missing_uplink_is_named(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    with pytest.raises(PlanConflict, match="network 'lab': uplink 'eth1' does not exist"):
        plan(desired_model(model.networks), Observed())


def test_unmarked_links_are_never_touched(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    observed = converged(model)
    stranger = LinkState(ifname="docker0", kind="bridge", up=True)
    other_net = LinkState(ifname="vn-other", kind="bridge", alias=alias("other", "bridge"),
                          group=link_group("other"))
    with_more = Observed(links=(*observed.links, stranger, other_net), sysctls=FORWARD_ON)
    # Scoped to lab: the other network's bridge survives; unscoped, it is an orphan.
    assert plan(desired_model(model.networks), with_more, scope=["lab"]) == []
    unscoped = plan(desired_model(model.networks), with_more)
    assert [(a.op, a.ifname) for a in unscoped] == [("delete", "vn-other")]
    assert all(a.ifname != "docker0" for a in plan_down(with_more, ["lab", "other"]))


def test_bond_vlan_bridge_order_and_uplink_trunk(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    (tmp_path / "prod.yaml").write_text((examples / "prod.yaml").read_text())
    model = load_model(tmp_path)
    eth = (LinkState(ifname="eth1", kind="veth"), LinkState(ifname="eth2", kind="veth"))
    actions = plan(desired_model(model.networks), Observed(links=eth))
    assert [(a.op, a.ifname) for a in actions] == [
        ("create", "bond0"), ("enslave", "eth1"), ("enslave", "eth2"),
        ("create", "bond0.42"), ("create", "vn-prod"), ("enslave", "bond0.42"),
        ("create", "prod-app1"), ("create", "prod-fw1"),
    ]
    uplink = actions[5]
    assert uplink.spec is not None
    assert uplink.spec.port_vlan is not None
    assert uplink.spec.port_vlan.tagged == (10, 20, 30)


def test_address_drift_is_planned(tmp_path: Path) -> None:
    model = lab_model(tmp_path)
    observed = converged(model)
    links = tuple(
        replace(link, addresses=(ipaddress.IPv4Interface("10.9.9.1/24"),)) if link.ifname == "vn-lab" else link
        for link in observed.links
    )
    actions = plan(desired_model(model.networks), Observed(links=links, sysctls=FORWARD_ON))
    assert [(a.op, a.changes[0][0]) for a in actions] == [("modify", "addresses")]
