"""``vnet policy explain``: the verdict and the deciding rule, from the same profiles the
compiler uses."""

from __future__ import annotations

import ipaddress

import pytest

from vnet.model import BridgeSpec, Guest, Ipv4Spec, Mode, Model, Network
from vnet.policy import load_library
from vnet.policy.explain import explain, parse_target

IP4 = ipaddress.IPv4Address


def model(mode: Mode = Mode.NAT) -> Model:
    net = Network(
        name="lab", mode=mode, bridge=BridgeSpec("vn-lab"),
        ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.77.0.1/24")), policies=("clean-traffic",),
        guests=(
            Guest("web1", "52:54:00:00:00:10", "lab-web1", policies=("web-server",),
                  ip=IP4("10.77.0.10")),
            Guest("db1", "52:54:00:00:00:11", "lab-db1", ip=IP4("10.77.0.11")),
            Guest("new", "52:54:00:00:00:12", "lab-new"),
        ),
    )
    return Model((net,))


@pytest.mark.parametrize(("source", "target", "verdict", "decided_by"), [
    ("db1", "10.77.0.10:80/tcp", "accept", "vnet/policies/web-server.yaml:10"),
    ("db1", "10.77.0.10:8081/tcp", "drop", "vnet/policies/web-server.yaml:7 default drop"),
    ("db1", "10.77.0.10", "accept", "vnet/policies/web-server.yaml:12"),
    ("web1", "198.51.100.1:25/tcp", "reject", "vnet/policies/web-server.yaml:18"),
    ("web1", "10.77.0.1:53/udp", "accept", "to the host"),
    ("web1", "10.77.0.1:22/tcp", "drop", "default drop"),
    ("new", "198.51.100.1:443/tcp", "drop", "vnet/policies/no-ip-spoofing.yaml:8"),
    ("lab/db1", "198.51.100.1:443/tcp", "accept", "nat"),
])
def test_explain_names_the_deciding_rule(
    source: str, target: str, verdict: str, decided_by: str
) -> None:
    result = explain(model(), load_library(None), source, target)
    assert result.verdict == verdict
    assert decided_by in result.deciding.reason


def test_explain_follows_leases_and_isolation() -> None:
    leases = {("lab", "52:54:00:00:00:12"): {IP4("10.77.0.150")}}
    result = explain(model(), load_library(None), "new", "10.77.0.10:443/tcp", leases)
    assert result.verdict == "accept"
    iso = explain(model(Mode.ISOLATED), load_library(None), "db1", "198.51.100.1:443/tcp")
    assert iso.verdict == "drop"
    assert "isolated" in iso.deciding.reason


def test_parse_target() -> None:
    assert parse_target("10.0.0.5:80/tcp") == (IP4("10.0.0.5"), 80, "tcp")
    assert parse_target("10.0.0.5") == (IP4("10.0.0.5"), None, "icmp")
    assert parse_target("[2001:db8::1]:53/udp") == (ipaddress.IPv6Address("2001:db8::1"), 53, "udp")
    for bad in ("10.0.0.5:99999/tcp", "nonsense", "10.0.0.5:80/icmp"):
        with pytest.raises(ValueError, match=r"."):
            parse_target(bad)
