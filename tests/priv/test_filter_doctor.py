"""``vnet doctor`` on a "host" namespace with the usual breakages: a foreign forward chain that
drops by default (Docker-style), IPv4 forwarding off, br_netfilter disabled for IPv4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import VNET, NetnsFactory, ns_exec

pytestmark = pytest.mark.priv

LAB = """\
name: lab
mode: nat
bridge: {name: vn-lab}
ipv4: {address: 10.77.0.1/24}
policies: [clean-traffic]
guests:
  - {name: web1, mac: "52:54:00:00:00:10", policies: [web-server]}
"""


def doctor(ns: str, config: Path) -> tuple[int, list[dict[str, str]]]:
    proc = ns_exec(ns, VNET, "--config-dir", str(config), "--state-dir", str(config / "state"),
                   "--policy-dir", str(config / "none"), "doctor", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_explains_what_breaks_guests(netns_factory: NetnsFactory, tmp_path: Path) -> None:
    host = netns_factory("d")
    (tmp_path / "lab.yaml").write_text(LAB)
    ns_exec(host, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    ns_exec(host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    ns_exec(host, "nft", "add table ip filter")
    ns_exec(host, "nft", "add chain ip filter FORWARD { type filter hook forward priority 0; "
                         "policy drop; }")
    code, findings = doctor(host, tmp_path)
    titles = [f["title"] for f in findings]
    assert code == 1
    assert "net.bridge.bridge-nf-call-iptables = 0" in titles
    assert "net.ipv4.ip_forward = 0" in titles
    forward = next(f for f in findings if "chain FORWARD" in f["title"])
    assert "Docker" in forward["why"]
    assert 'iifname "vn-lab" accept' in forward["fix"]
    assert "vnet's nftables tables are not loaded" in titles

    # fixed host: only what vnet itself still has to do remains
    ns_exec(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns_exec(host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    ns_exec(host, "nft", "delete table ip filter")
    code, findings = doctor(host, tmp_path)
    assert code == 0
    assert [f["title"] for f in findings] == ["vnet's nftables tables are not loaded"]
