"""Real DHCP clients (udhcpc, dhclient, dhcpcd) in guest namespaces against ``vnet daemon``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, NetnsFactory, ns_exec, wait_for
from tests.priv.dhcp_env import CONFIG, DhcpLab, record_env

pytestmark = pytest.mark.priv


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[DhcpLab]:
    lab = DhcpLab(netns_factory, tmp_path)
    try:
        lab.start_daemon()
        yield lab
    finally:
        lab.close()


def lease_json(lab: DhcpLab) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(lab.leases("--json", "--all"))
    return rows


def test_udhcpc_gets_lease_with_options(lab: DhcpLab) -> None:
    ns = lab.guest("52:54:00:00:01:01")
    lab.udhcpc(ns, "-O", "staticroutes", "-O", "mtu", "-O", "search", "-x", "hostname:guest1")
    env = lab.event("udhcpc", "bound")
    assert env["ip"].startswith("10.77.0.1")
    assert 100 <= int(env["ip"].rsplit(".", 1)[1]) <= 199
    assert env["subnet"] == "255.255.255.0"
    assert env["router"] == "10.77.0.1"
    assert env["dns"] == "10.77.0.1"
    assert env["domain"] == "lab.test"
    assert env["mtu"] == "1400"
    assert env["staticroutes"] == "192.168.50.0/24 10.77.0.1 0.0.0.0/0 10.77.0.1"
    assert env["search"] == "lab.test"
    rows = lease_json(lab)
    assert [(r["mac"], r["ip"], r["hostname"], r["state"]) for r in rows] == [
        ("52:54:00:00:01:01", env["ip"], "guest1", "bound")
    ]
    # udhcpc asks for unicast replies: they went to its MAC via the ARP table, not broadcast.
    stats = lab.status()["networks"]["lab"]["dhcp"]  # type: ignore[index]
    assert (stats["ack"], stats["arp_fallback"], stats["send_errors"]) == (1, 0, 0)


def test_reservation_gets_reserved_ip_and_hostname(lab: DhcpLab) -> None:
    ns = lab.guest("52:54:00:00:00:10")
    lab.udhcpc(ns)
    env = lab.event("udhcpc", "bound")
    assert env["ip"] == "10.77.0.10"
    assert env["hostname"] == "web1"
    assert "web1" in lab.leases("lab")


def test_dhclient_gets_lease_with_options(lab: DhcpLab) -> None:
    ns = lab.guest("52:54:00:00:02:01")
    lab.dhclient(ns)
    env = lab.event("dhclient", "BOUND")
    assert env["new_ip_address"].startswith("10.77.0.")
    assert env["new_routers"] == "10.77.0.1"
    assert env["new_domain_name_servers"] == "10.77.0.1"
    assert env["new_domain_name"] == "lab.test"
    assert env["new_interface_mtu"] == "1400"
    assert env["new_rfc3442_classless_static_routes"] == "24 192 168 50 10 77 0 1 0 10 77 0 1"
    # Release frees it.
    lab.dhclient(ns, "-r")
    assert wait_for(lambda: lease_json(lab)[0]["state"] == "released")


def test_dhcpcd_gets_lease(lab: DhcpLab) -> None:
    # dhcpcd keeps /var/lib/dhcpcd/IFNAME.lease: a name of our own, removed afterwards.
    ifname = f"vnd{os.getpid() % 100000}"
    lease_file = Path(f"/var/lib/dhcpcd/{ifname}.lease")
    try:
        _dhcpcd(lab, ifname)
    finally:
        lease_file.unlink(missing_ok=True)


def _dhcpcd(lab: DhcpLab, ifname: str) -> None:
    ns = lab.guest("52:54:00:00:03:01", ifname)
    conf = lab.tmp / "dhcpcd.conf"
    conf.write_text(
        "option routers, domain_name_servers, domain_name, interface_mtu, "
        "classless_static_routes\n"
    )
    script = lab.tmp / "dhcpcd.sh"
    script.write_text("#!/bin/sh\n" + record_env(lab.out, "dhcpcd", "$reason") + "\n")
    script.chmod(0o755)
    proc = ns_exec(ns, "dhcpcd", "-4", "-1", "-B", "-A", "-t", "20", "-f", str(conf),
                   "-c", str(script), ifname, timeout=40)
    assert (lab.out / "dhcpcd.BOUND.env").exists(), proc.stderr
    env = lab.event("dhcpcd", "BOUND")
    assert env["new_ip_address"].startswith("10.77.0.")
    assert env["new_routers"] == "10.77.0.1"
    assert env["new_domain_name_servers"] == "10.77.0.1"
    assert env["new_domain_name"] == "lab.test"
    assert env["new_interface_mtu"] == "1400"
    assert env["new_classless_static_routes"] == "192.168.50.0/24 10.77.0.1 0.0.0.0/0 10.77.0.1"
    assert [r["ip"] for r in lease_json(lab)] == [env["new_ip_address"]]


def test_renew_keeps_address_and_release_frees_it(lab: DhcpLab) -> None:
    ns = lab.guest("52:54:00:00:04:01")
    client = lab.udhcpc_daemon(ns)
    try:
        ip = lab.event("udhcpc", "bound")["ip"]
        client.send_signal(signal.SIGUSR1)
        assert lab.event("udhcpc", "renew")["ip"] == ip
        client.send_signal(signal.SIGUSR2)
        assert wait_for(
            lambda: [(r["ip"], r["state"]) for r in lease_json(lab)] == [(ip, "released")]
        )
    finally:
        client.kill()
        client.wait()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "kill9"])
def test_clients_keep_addresses_across_daemon_restart(lab: DhcpLab, how: int) -> None:
    ns = lab.guest("52:54:00:00:05:01")
    client = lab.udhcpc_daemon(ns)
    try:
        ip = lab.event("udhcpc", "bound")["ip"]
        lab.stop_daemon(how)
        lab.start_daemon()
        client.send_signal(signal.SIGUSR1)
        assert lab.event("udhcpc", "renew")["ip"] == ip
        # A new client is not handed the same address.
        other = lab.guest("52:54:00:00:05:02")
        lab.forget("udhcpc", "bound")
        lab.udhcpc(other)
        assert lab.event("udhcpc", "bound")["ip"] != ip
    finally:
        client.kill()
        client.wait()


RELAY_PROBE = """
import socket, sys
sys.path.insert(0, {repo!r})
from tests.unit.dhcp_helpers import request
from vnet.dhcp import codec
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.50", 67))
s.settimeout(3)
s.sendto(b"\\x01garbage", ("10.77.0.1", 67))
s.sendto(codec.encode(request(codec.DISCOVER, "52:54:00:00:09:01", giaddr="192.0.2.1")),
         ("10.77.0.1", 67))
s.sendto(codec.encode(request(codec.DISCOVER, "52:54:00:00:09:02", giaddr="10.77.0.50")),
         ("10.77.0.1", 67))
data, addr = s.recvfrom(4096)
reply = codec.decode(data)
print(addr[0], addr[1], reply.msg_type, reply.mac, socket.inet_ntoa(reply.yiaddr))
"""


def test_relayed_requests_answered_to_relay_unknown_relays_and_garbage_counted(
    lab: DhcpLab,
) -> None:
    ns = lab.guest("52:54:00:00:09:00")
    ns_exec(ns, "ip", "addr", "add", "10.77.0.50/24", "dev", "eth0")
    out = ns_exec(ns, str(VENV_BIN / "python"), "-c", RELAY_PROBE.format(repo=str(REPO)))
    src, port, msg_type, mac, yiaddr = out.stdout.split()
    assert (src, port, int(msg_type), mac) == ("10.77.0.1", "67", 2, "52:54:00:00:09:02")
    assert yiaddr.startswith("10.77.0.")
    stats = lab.status()["networks"]["lab"]["dhcp"]  # type: ignore[index]
    assert stats["malformed"] == 1
    assert stats["relay_refused"] == 1
    assert stats["offer"] == 1


def test_leased_hostname_resolves_in_dns(lab: DhcpLab) -> None:
    """Lease events reach the DNS service: the client's name answers right after the ACK
    (the event is published before the ACK is sent; the zone follows within one rebuild)."""
    ns = lab.guest("52:54:00:00:0a:01")
    lab.udhcpc(ns, "-x", "hostname:named1")
    ip = lab.event("udhcpc", "bound")["ip"]

    def answer() -> list[str]:
        return ns_exec(ns, "kdig", "+short", "+timeout=2", "@10.77.0.1",
                       "named1.lab.test").stdout.split()

    assert wait_for(lambda: answer() == [ip], timeout=2), answer()


def test_probe_skips_an_address_someone_already_uses(
    netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    lab = DhcpLab(netns_factory, tmp_path, CONFIG.replace("    mtu: 1400\n", "    probe: true\n"))
    try:
        lab.start_daemon()
        squatter = lab.guest("52:54:00:00:0b:01")
        ns_exec(squatter, "ip", "addr", "add", "10.77.0.100/24", "dev", "eth0")
        client = lab.guest("52:54:00:00:0b:02")
        lab.udhcpc(client)
        assert lab.event("udhcpc", "bound")["ip"] == "10.77.0.101"
        stats = lab.status()["networks"]["lab"]["dhcp"]  # type: ignore[index]
        assert stats["probe_conflict"] == 1
        assert "10.77.0.100 answers pings but has no lease" in lab.logtext()
    finally:
        lab.close()
