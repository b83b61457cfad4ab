"""Filter policies with the real daemon: ``vnet daemon`` applies the tables, a real DHCP client
gets a lease, and the filter service lets exactly that address through without a recompile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NetnsFactory, sh
from tests.priv.dhcp_env import DhcpLab
from tests.priv.test_filter import Sniffer, in_netns, send_frame, udp_frame

pytestmark = pytest.mark.priv

MAC1, MAC2 = "52:54:00:00:08:01", "52:54:00:00:08:02"
IP2 = "10.77.0.20"


def config(ns1: str, ns2: str) -> str:
    return f"""\
name: lab
mode: nat
bridge: {{name: vn-lab}}
ipv4:
  address: 10.77.0.1/24
  dhcp:
    ranges: [10.77.0.100-10.77.0.199]
    reservations:
      - {{mac: "{MAC2}", ip: {IP2}}}
policies: [clean-traffic]
guests:
  - {{name: g1, mac: "{MAC1}", port: veth, netns: {ns1}}}
  - {{name: g2, mac: "{MAC2}", port: veth, netns: {ns2}}}
"""


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[tuple[DhcpLab, str, str]]:
    ns1, ns2 = netns_factory("g"), netns_factory("g")
    env = DhcpLab(netns_factory, tmp_path, config(ns1, ns2), manual_l2=False)
    try:
        yield env, ns1, ns2
    finally:
        env.close()


def rule_handles(ns: str) -> list[tuple[str, int]]:
    from vnet.host import nft

    out = []
    for family in ("bridge", "inet"):
        for item in in_netns(ns, nft.list_table, family) or []:
            for kind in ("table", "chain", "rule"):
                if kind in item:
                    out.append((f"{family} {kind} {item[kind].get('chain', '')}",
                                int(item[kind]["handle"])))
    return sorted(out)


def test_dhcp_lease_opens_exactly_the_leased_address(lab: tuple[DhcpLab, str, str]) -> None:
    env, ns1, ns2 = lab
    env.start_daemon()
    sh("ip", "-n", ns2, "addr", "add", f"{IP2}/24", "dev", "eth0")
    before = rule_handles(env.host)
    assert before, "vnet daemon did not load its tables"
    sniffer = Sniffer(ns2)
    try:
        def passes(src: str, marker: bytes, timeout: float = 0.5) -> bool:
            send_frame(ns1, udp_frame(MAC1, src, MAC2, IP2, marker))
            return sniffer.saw(marker, timeout)

        assert not passes("10.77.0.150", b"before-lease")
        env.udhcpc(ns1)  # DHCP itself passes clean-traffic (allow-dhcp)
        leased = env.event("udhcpc", "bound")["ip"]
        forged = "10.77.0.99" if leased != "10.77.0.99" else "10.77.0.98"
        # The binding is in place before the ACK leaves: the first packet passes.
        assert passes(leased, b"leased-first", 2.0), env.logtext()
        assert not passes(forged, b"forged")
        assert rule_handles(env.host) == before  # elements changed, the ruleset did not
    finally:
        sniffer.stop()
