"""``vnet doctor``'s diagnosis from host facts (pure): each breakage yields one finding."""

from __future__ import annotations

import ipaddress

from vnet.model import BridgeSpec, Guest, Ipv4Spec, Mode, Model, Network
from vnet.policy.doctor import BRNF, FORWARD, BaseChain, HostFacts, diagnose

GOOD = {BRNF["ip"]: "1", BRNF["ip6"]: "1", FORWARD: "1"}


def model(mode: Mode = Mode.NAT, policies: tuple[str, ...] = ("clean-traffic",)) -> Model:
    return Model((Network(
        name="lab", mode=mode, bridge=BridgeSpec("vn-lab"),
        ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.77.0.1/24")), policies=policies,
        guests=(Guest("g", "52:54:00:00:00:01", "lab-g"),)),))


def titles(facts: HostFacts, m: Model | None = None) -> list[str]:
    return [f.title for f in diagnose(m or model(), facts)]


def test_healthy_host_has_no_findings() -> None:
    assert titles(HostFacts(sysctls=GOOD, vnet_tables=("bridge", "inet"))) == []


def test_each_breakage_is_named() -> None:
    facts = HostFacts(sysctls={FORWARD: "0"}, vnet_tables=("bridge", "inet"))
    assert titles(facts) == ["br_netfilter is not loaded", "net.ipv4.ip_forward = 0"]
    facts = HostFacts(sysctls={**GOOD, BRNF["ip6"]: "0"}, vnet_tables=("bridge", "inet"))
    assert titles(facts) == ["net.bridge.bridge-nf-call-ip6tables = 0"]
    docker = BaseChain("ip", "filter", "FORWARD", "forward", 0, "drop")
    accepting = BaseChain("inet", "fw", "input", "input", 0, "accept")
    found = diagnose(model(), HostFacts(sysctls=GOOD, foreign_chains=(docker, accepting),
                                        vnet_tables=("bridge", "inet")))
    assert len(found) == 1
    assert "Docker" in found[0].why
    assert 'nft insert rule ip filter FORWARD iifname "vn-lab" accept' in found[0].fix


def test_findings_depend_on_what_the_model_needs() -> None:
    bare = HostFacts(sysctls={FORWARD: "0"}, vnet_tables=("bridge", "inet"))
    # no policies: br_netfilter does not matter; isolated: forwarding does not matter
    assert titles(bare, model(Mode.ISOLATED, ())) == []
    assert titles(HostFacts(sysctls=GOOD), model()) == ["vnet's nftables tables are not loaded"]
    assert titles(HostFacts(sysctls=GOOD, legacy_iptables=("filter",),
                            vnet_tables=("inet",))) == [
        "legacy iptables tables are in use: filter"]
