"""DNS end to end inside ``vnet daemon``: a real DHCP client's hostname becomes a name.

udhcpc in a guest namespace gets a lease from the daemon's DHCP server, sending a hostname; the
daemon's DNS server (same process, fed by the lease event bus) then answers kdig for that name
and its PTR, and forgets it when the client releases the lease.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NetnsFactory, ns_exec, wait_for
from tests.priv.dhcp_env import DhcpLab

GW = "10.77.0.1"


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[DhcpLab]:
    lab = DhcpLab(netns_factory, tmp_path)
    try:
        lab.start_daemon()
        yield lab
    finally:
        lab.close()


def dig(ns: str, *args: str) -> str:
    """kdig's output; empty when it got no answer (e.g. the guest's address is not up yet)."""
    return ns_exec(ns, "kdig", f"@{GW}", "+time=2", "+retry=1", *args, check=False,
                   timeout=30).stdout


def short(ns: str, *args: str) -> list[str]:
    return dig(ns, "+short", *args).split()


@pytest.mark.priv
def test_lease_hostname_resolves_until_released(lab: DhcpLab) -> None:
    ns = lab.guest("52:54:00:00:00:31")
    # Another guest with a static address asks (the DHCP client loses its address on release).
    asker = lab.guest("52:54:00:00:00:32")
    ns_exec(asker, "ip", "addr", "add", "10.77.0.250/24", "dev", "eth0")
    client = lab.udhcpc_daemon(ns, "-x", "hostname:alpha")
    try:
        ip = lab.event("udhcpc", "bound")["ip"]
        assert wait_for(lambda: short(asker, "alpha.lab.test", "A") == [ip], timeout=10)
        assert wait_for(lambda: short(ns, "alpha.lab.test", "A") == [ip], timeout=10)
        assert short(asker, "-x", ip) == ["alpha.lab.test."]
        assert short(asker, "web1.lab.test", "A") == ["10.77.0.10"]
        assert "status: NXDOMAIN" in dig(asker, "beta.lab.test", "A")
        # A renewal keeps the name; a release removes it, without a restart.
        client.send_signal(signal.SIGUSR1)
        assert lab.event("udhcpc", "renew")["ip"] == ip
        assert short(asker, "alpha.lab.test", "A") == [ip]
        client.send_signal(signal.SIGUSR2)
        assert wait_for(lambda: "status: NXDOMAIN" in dig(asker, "alpha.lab.test", "A"),
                        timeout=10), lab.logtext()
        assert "status: NXDOMAIN" in dig(asker, "-x", ip)
    finally:
        client.kill()
        client.wait()
