"""The daemon as a controller: what someone else changes is put back, guests come and go
through the API without touching other guests, and restarts adopt the data plane."""

from __future__ import annotations

import contextlib
import difflib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VNET, NetnsFactory, sh, wait_for
from tests.priv.dhcp_env import DhcpLab
from tests.priv.test_filter_daemon import rule_handles
from vnet import api
from vnet.errors import ApiError

pytestmark = pytest.mark.priv

GUEST_MAC = "52:54:00:00:0c:01"


def config(guest_ns: str) -> str:
    return f"""\
name: lab
mode: nat
bridge: {{name: vn-lab}}
ipv4:
  address: 10.77.0.1/24
  dhcp:
    ranges: [10.77.0.100-10.77.0.199]
    reservations:
      - {{mac: "52:54:00:00:0c:09", ip: 10.77.0.9, name: web9}}
policies: [clean-traffic]
guests:
  - {{name: g1, mac: "{GUEST_MAC}", port: veth, netns: {guest_ns}}}
"""


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[tuple[DhcpLab, str]]:
    guest = netns_factory("g")
    lab = DhcpLab(netns_factory, tmp_path, config(guest), manual_l2=False)
    try:
        yield lab, guest
    finally:
        lab.close()


def links(ns: str) -> dict[str, dict[str, object]]:
    return {link["ifname"]: link for link in json.loads(sh("ip", "-n", ns, "-d", "-j", "link").stdout)}


def vnet(lab: DhcpLab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", lab.host, VNET, *args, "--config-dir", str(lab.config_dir),
              "--state-dir", str(lab.state_dir), "--run-dir", str(lab.run_dir),
              "--policy-dir", str(lab.tmp / "nopolicies"), check=check)


def add_guest(lab: DhcpLab, name: str, mac: str, **extra: object) -> dict[str, object]:
    body = {"guest": name, "mac": mac, **extra}
    port: dict[str, object] = api.call(lab.run_dir, "POST", "/v1/networks/lab/guests", body)
    return port


def test_a_deleted_bridge_is_put_back_and_dhcp_follows_it(lab: tuple[DhcpLab, str]) -> None:
    env, guest = lab
    env.start_daemon()
    before = links(env.host)["vn-lab"]["ifindex"]
    began = time.monotonic()
    sh("ip", "-n", env.host, "link", "del", "vn-lab")
    assert wait_for(lambda: "vn-lab" in links(env.host) and links(env.host)["lab-g1"].get("master")
                    == "vn-lab", timeout=5, interval=0.02), env.logtext()
    repaired = time.monotonic() - began
    assert links(env.host)["vn-lab"]["ifindex"] != before
    assert repaired < 1.0, f"repaired after {repaired:.2f} s"
    # DHCP serves on the new bridge (its socket followed the recreated link).
    env.udhcpc(guest)
    assert env.event("udhcpc", "bound")["ip"].startswith("10.77.0.1")
    assert "in sync" in vnet(env, "status").stdout


def test_guests_come_and_go_without_restarting_services(lab: tuple[DhcpLab, str]) -> None:
    env, _guest = lab
    env.start_daemon()
    dhcp_before = env.status()["networks"]["lab"]["dhcp"]  # type: ignore[index]
    handles = rule_handles(env.host)
    port = add_guest(env, "vm1", "52:54:00:00:0c:09", ifname="vm1tap")
    assert (port["ifname"], port["ip"], port["origin"]) == ("vm1tap", "10.77.0.9", "api")
    tap = links(env.host)["vm1tap"]
    assert (tap["master"], tap.get("ifalias")) == ("vn-lab", "vnet:lab:port:vm1")
    # The same request again: the same port, no new link.
    again = add_guest(env, "vm1", "52:54:00:00:0c:09", ifname="vm1tap")
    assert again["changes"] == []
    assert links(env.host)["vm1tap"]["ifindex"] == tap["ifindex"]
    # The ruleset kept its handles (elements changed only) and DHCP was not restarted.
    assert rule_handles(env.host) == handles
    assert env.status()["networks"]["lab"]["dhcp"]["received"] >= dhcp_before["received"]  # type: ignore[index]
    # An attached port is desired state: `vnet apply` and a reload keep it.
    assert vnet(env, "apply").stdout.strip() == "no changes"
    api.call(env.run_dir, "POST", "/v1/reload")
    assert links(env.host)["vm1tap"]["ifindex"] == tap["ifindex"]
    gone = api.call(env.run_dir, "DELETE", "/v1/networks/lab/guests/vm1")
    assert gone["removed"] is True
    assert "vm1tap" not in links(env.host)
    assert api.call(env.run_dir, "DELETE", "/v1/networks/lab/guests/vm1")["removed"] is False
    assert rule_handles(env.host) == handles
    # The declared guest was never touched.
    assert links(env.host)["lab-g1"]["master"] == "vn-lab"


def test_restart_adopts_the_data_plane_with_zero_churn(lab: tuple[DhcpLab, str]) -> None:
    env, _guest = lab
    env.start_daemon()
    add_guest(env, "vm1", "52:54:00:00:0c:21", ifname="vm1tap")
    before = {n: link["ifindex"] for n, link in links(env.host).items()}
    handles = rule_handles(env.host)
    for how in (signal.SIGTERM, signal.SIGKILL):
        env.stop_daemon(how)
        # Stopped: the data plane stays (guests keep their links).
        assert {n: link["ifindex"] for n, link in links(env.host).items()} == before
        mark = len(env.logtext())
        env.start_daemon()
        assert {n: link["ifindex"] for n, link in links(env.host).items()} == before
        assert rule_handles(env.host) == handles
        assert "apply:" not in env.logtext()[mark:], env.logtext()[mark:]
        ports = api.call(env.run_dir, "GET", "/v1/networks/lab/guests")
        assert {p["guest"] for p in ports} == {"g1", "vm1"}


def test_a_tap_libvirt_makes_on_the_bridge_is_adopted_by_mac(lab: tuple[DhcpLab, str]) -> None:
    """type='bridge': libvirt creates vnetN (host MAC fe:...) and enslaves it itself; the guest
    recorded at prepare (pending) gets it as its port the moment it joins the bridge."""
    env, _guest = lab
    env.start_daemon()
    pending = api.call(env.run_dir, "POST", "/v1/hooks/libvirt", {
        "argv": ["vm5", "prepare", "begin", "-"],
        "xml": "<domain type='qemu'><name>vm5</name><uuid>5d1d0f4e-1b2c-4d3e-8f90-0a1b2c3d4e5f</uuid>"
               "<devices><interface type='bridge'>"
               "<mac address='52:54:00:00:0c:55'/><source bridge='vn-lab'/>"
               "<model type='virtio'/></interface></devices></domain>"})
    assert pending["ports"][0]["pending"] is True
    # Play libvirt: its TAP, its MAC rule, enslaved by hand.
    sh("ip", "-n", env.host, "tuntap", "add", "vnet7", "mode", "tap")
    sh("ip", "-n", env.host, "link", "set", "vnet7", "address", "fe:54:00:00:0c:55")
    sh("ip", "-n", env.host, "link", "set", "vnet7", "master", "vn-lab", "up")
    assert wait_for(lambda: links(env.host)["vnet7"].get("ifalias") == "vnet:lab:port:vm5",
                    timeout=2, interval=0.02), env.logtext()
    # the kernel has it first; the daemon's answer follows when its worker has finished

    def port() -> dict[str, object] | None:
        guests = api.call(env.run_dir, "GET", "/v1/networks/lab/guests")
        return next((g for g in guests if g["guest"] == "vm5"), None)

    assert wait_for(lambda: port() is not None, timeout=2)
    adopted = port()
    assert adopted is not None
    assert (adopted["ifname"], adopted["mac"], adopted["origin"]) == ("vnet7", "52:54:00:00:0c:55",
                                                                      "libvirt")
    released = api.call(env.run_dir, "POST", "/v1/hooks/libvirt", {
        "argv": ["vm5", "release", "end", "destroyed"],
        "xml": "<domain type='qemu'><name>vm5</name><uuid>5d1d0f4e-1b2c-4d3e-8f90-0a1b2c3d4e5f</uuid>"
               "<devices><interface type='bridge'>"
               "<mac address='52:54:00:00:0c:55'/><source bridge='vn-lab'/>"
               "<target dev='vnet7'/></interface></devices></domain>"})
    assert released["ports"][0]["removed"] is True
    assert "vnet7" not in links(env.host)


def test_a_port_enslaved_by_hand_is_isolated_but_gets_dhcp(
        lab: tuple[DhcpLab, str], netns_factory: NetnsFactory) -> None:
    env, guest = lab
    env.start_daemon()
    stray = netns_factory("s")
    sh("ip", "-n", env.host, "link", "add", "stray0", "type", "veth", "peer", "name", "eth0",
       "netns", stray)
    sh("ip", "-n", stray, "link", "set", "eth0", "up")
    sh("ip", "-n", env.host, "link", "set", "stray0", "master", "vn-lab", "up")
    assert wait_for(lambda: "unknown port stray0" in vnet(env, "status").stdout, timeout=2)
    # DHCP to vnet works from it (the address comes from the range)...
    env.udhcpc(stray)
    ip = env.event("udhcpc", "bound")["ip"]
    assert ip.startswith("10.77.0.1")
    doctor = vnet(env, "doctor", check=False).stdout
    assert "ports on its bridge that are no guest's: stray0" in doctor

    # ... anything else does not: a declared guest cannot reach it, until the network allows
    # unknown ports.
    def ping() -> bool:
        # two echoes: the first may go while the guest re-resolves the stray's MAC (its ARP
        # entry failed while the port was isolated)
        return sh("ip", "netns", "exec", guest, "ping", "-c", "2", "-i", "0.3", "-W", "1", ip,
                  check=False).returncode == 0

    env.udhcpc(guest)
    assert not ping()
    env.write_config(config(guest).replace("policies: [clean-traffic]\n",
                                           "policies: [clean-traffic]\nunknown-ports: allow\n"))
    api.call(env.run_dir, "POST", "/v1/reload")
    assert ping()


def test_frames_from_an_undeclared_mac_are_counted_and_explained(lab: tuple[DhcpLab, str]) -> None:
    env, guest = lab
    env.start_daemon()
    sh("ip", "-n", guest, "link", "set", "eth0", "address", "52:54:00:00:0c:99")
    failed = sh("ip", "netns", "exec", guest, "udhcpc", "-f", "-q", "-n", "-t", "2", "-T", "1",
                "-i", "eth0", "-s", str(env.udhcpc_script), check=False, timeout=20)
    assert failed.returncode != 0  # clean-traffic drops it: the silent failure users hit
    status = json.loads(vnet(env, "status", "--json").stdout)
    port = status["networks"][0]["ports"][0]
    assert port["ifname"] == "lab-g1"
    assert port["unexpected_mac_frames"] >= 2
    doctor = vnet(env, "doctor", check=False)
    assert doctor.returncode == 1
    assert f"frames from a MAC other than {GUEST_MAC}" in doctor.stdout
    api.call(env.run_dir, "POST", "/v1/reload")  # a check runs: the daemon logs it too
    assert wait_for(lambda: "lab-g1, guest g1 (declared MAC 52:54:00:00:0c:01)" in env.logtext(),
                    timeout=15), env.logtext()


def ruleset_text(ns: str) -> str:
    out = []
    for family in ("bridge", "inet"):
        out.append(sh("ip", "netns", "exec", ns, "nft", "list", "table", family, "vnet").stdout)
    return "".join(out)


def test_rules_edited_by_hand_inside_vnets_tables_are_put_back(
        lab: tuple[DhcpLab, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Drift is measured against the kernel: a rule inserted into vnet's own table, or an
    element deleted from it, is found by the periodic check and the tables are loaded again."""
    env, _guest = lab
    monkeypatch.setenv("VNET_CHECK_EVERY", "0.3")
    env.start_daemon()
    before = ruleset_text(env.host)
    sh("ip", "netns", "exec", env.host, "nft", "insert", "rule", "bridge", "vnet", "prerouting",
       "accept")
    assert "accept" in ruleset_text(env.host).split("chain prerouting", 1)[1].split("}", 1)[0]
    assert wait_for(lambda: ruleset_text(env.host) == before, timeout=5), "\n".join(
        difflib.unified_diff(before.splitlines(), ruleset_text(env.host).splitlines()))
    assert "changed by someone else" in env.logtext()
    sh("ip", "netns", "exec", env.host, "nft", "delete", "element", "bridge", "vnet", "ports",
       "{ lab-g1 }")
    assert wait_for(lambda: ruleset_text(env.host) == before, timeout=5), env.logtext()


def test_kill9_mid_attach_loses_nothing_and_leaks_nothing(lab: tuple[DhcpLab, str]) -> None:
    """``kill -9`` at some moment of an attach (before, during, after the port is made): after
    the next start, the guest is either attached with its port or absent without one, and
    nothing is left over (the plan is empty)."""
    env, _guest = lab
    env.start_daemon()
    for n, delay in enumerate((0.0, 0.001, 0.003, 0.006, 0.012, 0.03)):
        name, ifname = f"k{n}", f"vk{n}"

        def attach(guest: str = name, port: str = ifname, i: int = n) -> None:
            with contextlib.suppress(ApiError):
                add_guest(env, guest, f"52:54:00:00:0d:{i:02x}", ifname=port)

        caller = threading.Thread(target=attach)
        caller.start()
        time.sleep(delay)  # fault injection: kill at a different moment each round
        env.stop_daemon(signal.SIGKILL)
        caller.join(timeout=15)
        env.start_daemon()
        attached = {p["guest"]: p["ifname"] for p in
                    api.call(env.run_dir, "GET", "/v1/networks/lab/guests")}
        assert (name in attached) == (ifname in links(env.host)), (delay, attached)
        assert vnet(env, "plan").stdout.strip() == "no changes", delay
        leaked = [i for i, link in links(env.host).items()
                  if str(link.get("ifalias", "")).startswith("vnet:") and i not in
                  {*attached.values(), "vn-lab"}]
        assert leaked == [], (delay, leaked)
