"""A guest with a DHCP reservation migrates between two hosts through libvirt's qemu hook.

Two host namespaces, A and B, each run their own ``vnet daemon`` (applying L2 and nft itself)
with the same definition of network ``lab`` (nat, bridge vn-lab, 10.77.11.1/24, a reservation
52:54:00:00:0b:01 -> 10.77.11.21, ``clean-traffic``). Each also has a declared "peer" guest on
a veth port (its own namespace, reservation 10.77.11.22) that receives the guest's traffic.

The migrating guest is the domain ``mig1`` with ``<interface type='ethernet'>`` on the
unmanaged TAP ``mig1tap`` and vnet metadata. Its NIC is a small process (``TapGuest``) that
opens the TAP with TUNSETIFF (IFF_TAP|IFF_NO_PI) inside the host namespace and reads and writes
Ethernet frames: it stands in for QEMU's process holding the TAP. A real QEMU migration needs
two hosts with shared storage and is out of scope here; the network side (hook calls, the TAP,
the port, the filter elements) is identical. The guest never runs DHCP: its address is its
reservation, bound as configured, so on B it must pass without asking B's DHCP server.

The hook is run as libvirtd runs it (the contrib script, XML on stdin, ``VNET_RUN_DIR``):
A ``prepare begin``; then the migrate sequence: B ``migrate begin`` (prints nothing) and
``prepare begin``, the guest process moves from A's TAP to B's, A ``release end``. Then a stop
on B (``release end``) and ``vnet gc`` for a guest that vanished without a stop.

Run: ``VNET_TEST_NS_PREFIX=... .venv/bin/pytest integration/test_migration.py -q`` (root).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VNET, NetnsFactory, ns_exec, sh, wait_for
from tests.priv.dhcp_env import BRIDGE, DhcpLab
from tests.priv.test_filter import Sniffer
from tests.priv.test_libvirt_hook import hook, links, ok
from vnet import api

pytestmark = pytest.mark.priv

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, UDP, ARP = scapy_all.Ether, scapy_all.IP, scapy_all.UDP, scapy_all.ARP

MAC, IP_GUEST, FORGED = "52:54:00:00:0b:01", "10.77.11.21", "10.77.11.99"
PEER_MAC, PEER_IP = "52:54:00:00:0b:02", "10.77.11.22"
GC_MAC, KEEP_MAC = "52:54:00:00:0b:03", "52:54:00:00:0b:04"
TAP, PEER_PORT = "mig1tap", "lab-peer"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def config(peer_ns: str) -> str:
    return f"""\
name: lab
mode: nat
bridge: {{name: {BRIDGE}}}
policies: [clean-traffic]
ipv4:
  address: 10.77.11.1/24
  dhcp:
    ranges: [10.77.11.100-10.77.11.199]
    lease-time: 1h
    reservations:
      - {{mac: "{MAC}", ip: {IP_GUEST}}}
      - {{mac: "{PEER_MAC}", ip: {PEER_IP}}}
guests:
  - {{name: peer, mac: "{PEER_MAC}", port: veth, netns: {peer_ns}}}
"""


DOMAIN = f"""\
<domain type='qemu'>
  <name>mig1</name>
  <uuid>7d2e4b1a-0c3f-4e5d-8a9b-1c2d3e4f5a6b</uuid>
  <metadata>
    <vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
      <vnet:port mac="{MAC}" network="lab"/>
    </vnet:ports>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='ethernet'>
      <mac address='{MAC}'/>
      <target dev='{TAP}' managed='no'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
  </devices>
</domain>
"""

# The guest's NIC: what QEMU does with -netdev tap,ifname=TAP (without vnet_hdr). Frames to send
# come as hex lines on stdin (EOF: exit, the TAP is released); frames read are hex lines out.
GUEST_NIC = r"""
import fcntl, os, select, struct, sys
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", sys.argv[1].encode(), IFF_TAP | IFF_NO_PI))
print("ready", flush=True)
stdin, pending = sys.stdin.fileno(), b""
while True:
    readable, _, _ = select.select([stdin, fd], [], [])
    if fd in readable:
        print(os.read(fd, 65536).hex(), flush=True)
    if stdin in readable:
        data = os.read(stdin, 65536)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            os.write(fd, bytes.fromhex(line.decode()))
"""


class TapGuest:
    """A process holding ``tap`` in ``host`` as QEMU would: writes frames, collects frames."""

    def __init__(self, host: str, tap: str) -> None:
        self.received: list[bytes] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host, sys.executable, "-c", GUEST_NIC, tap],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(10):
            self.close()
            raise AssertionError(f"the guest NIC did not open {tap}: {self._stderr()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == b"ready":
                self._ready.set()
            else:
                self.received.append(bytes.fromhex(line.decode()))

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame.hex().encode() + b"\n")
        self.proc.stdin.flush()

    def saw(self, match: Callable[[Any], bool], timeout: float) -> bool:
        return wait_for(lambda: any(match(Ether(f)) for f in list(self.received)), timeout)

    def kill(self) -> None:
        """The guest vanishes (QEMU crashed): its process ends without any hook call."""
        self.proc.kill()
        self.close()

    def close(self) -> None:
        """QEMU exits: the TAP is closed (it stays, persistent, until vnet removes it)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@dataclass
class Host:
    name: str  # "A" or "B"
    lab: DhcpLab
    peer: str  # the peer guest's namespace

    @property
    def ns(self) -> str:
        return self.lab.host

    def hook(self, op: str, subop: str) -> subprocess.CompletedProcess[bytes]:
        return hook(self.ns, self.lab.run_dir, ["mig1", op, subop, "-"], DOMAIN)

    def guests(self) -> dict[str, dict[str, Any]]:
        rows = api.call(self.lab.run_dir, "GET", "/v1/networks/lab/guests")
        return {row["guest"]: row for row in rows}

    def elements(self) -> set[str]:
        """Every set and map element of vnet's tables in this host, one JSON text each."""
        out: set[str] = set()
        for family in ("bridge", "inet"):
            text = ns_exec(self.ns, "nft", "-j", "list", "table", family, "vnet").stdout
            for item in json.loads(text)["nftables"]:
                for kind in ("set", "map"):
                    if kind in item:
                        for elem in item[kind].get("elem", []):
                            out.add(f"{family} {item[kind]['name']} {json.dumps(elem, sort_keys=True)}")
        return out

    def tables(self) -> str:
        return "\n".join(ns_exec(self.ns, "nft", "-j", "list", "table", family, "vnet").stdout
                         for family in ("bridge", "inet"))

    def port_up(self, ifname: str) -> bool:
        link = links(self.ns).get(ifname)
        if link is None or link.get("master") != BRIDGE or link.get("operstate") != "UP":
            return False
        state = json.loads(ns_exec(self.ns, "bridge", "-j", "link", "show", "dev", ifname).stdout)
        return bool(state) and state[0].get("state") == "forwarding"


def mentions(text: str, *needles: str) -> list[str]:
    return [n for n in needles if n in text]


def guest_traces(host: Host, mac: str, ifname: str, ip: str | None = None) -> list[str]:
    """What of one guest is left in ``host``: its link, attachment, nft elements and rules."""
    left = []
    if ifname in links(host.ns):
        left.append(f"link {ifname}")
    left += [f"attachment {g}" for g, row in host.guests().items() if row["mac"] == mac]
    needles = [mac, f'"{ifname}"'] + ([f'"{ip}"'] if ip else [])
    left += [f"nft {e}" for e in host.elements() if mentions(e, *needles)]
    left += [f"nft table text mentions {n}" for n in mentions(host.tables(), *needles)]
    return left


def start_host(netns_factory: NetnsFactory, tmp_path: Path, name: str) -> Host:
    peer = netns_factory("p")
    (tmp_path / name).mkdir()
    lab = DhcpLab(netns_factory, tmp_path / name, config(peer), manual_l2=False)
    host = Host(name, lab, peer)
    try:
        lab.start_daemon()
        sh("ip", "-n", peer, "addr", "add", f"{PEER_IP}/24", "dev", "eth0")
    except BaseException:
        lab.close()
        raise
    return host


@pytest.fixture
def hosts(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    made: list[Host] = []
    try:
        made.append(start_host(netns_factory, tmp_path, "A"))
        made.append(start_host(netns_factory, tmp_path, "B"))
        yield made[0], made[1]
    finally:
        for host in made:
            host.lab.close()


@pytest.fixture
def host_b(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Host]:
    host = start_host(netns_factory, tmp_path, "B")
    try:
        yield host
    finally:
        host.lab.close()


def honest(marker: bytes, src_ip: str = IP_GUEST) -> bytes:
    return bytes(Ether(src=MAC, dst=PEER_MAC) / IP(src=src_ip, dst=PEER_IP)
                 / UDP(sport=40000, dport=9999) / marker)


def arp_request(src_ip: str) -> bytes:
    return bytes(Ether(src=MAC, dst=BROADCAST) / ARP(op=1, hwsrc=MAC, psrc=src_ip, pdst=PEER_IP))


def is_arp_reply(frame: Any) -> bool:
    return bool(frame.haslayer(ARP) and frame[ARP].op == 2 and frame[ARP].psrc == PEER_IP
                and frame[ARP].pdst == IP_GUEST)


def check_filtering(host: Host, nic: TapGuest) -> None:
    """From the guest's NIC on ``host``: its own address reaches the peer, a forged one does not."""
    assert wait_for(lambda: host.port_up(TAP), 5), links(host.ns).get(TAP)
    sniffer = Sniffer(host.peer)
    try:
        tag = host.name.encode()
        nic.send(honest(b"forged-" + tag, FORGED))  # first: it would arrive before the honest one
        nic.send(arp_request(FORGED))
        nic.send(honest(b"honest-" + tag))
        assert sniffer.saw(b"honest-" + tag, 3), f"host {host.name}: the guest's own address lost"
        assert not sniffer.saw(b"forged-" + tag, 0.3), f"host {host.name}: forged source passed"
        forged_arp = [f for f in sniffer.frames if ARP in Ether(f) and Ether(f)[ARP].psrc == FORGED]
        assert not forged_arp, f"host {host.name}: ARP from a forged address passed"
        nic.send(arp_request(IP_GUEST))  # and back: the peer's answer reaches the guest's NIC
        assert nic.saw(is_arp_reply, 3), f"host {host.name}: no ARP reply reached the guest"
    finally:
        sniffer.stop()


def dhcp_asked(host: Host) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """What the host's DHCP server heard (its counters) and the leases it holds for the guest."""
    status: dict[str, Any] = api.call(host.lab.run_dir, "GET", "/v1/status")
    stats = status["networks"]["lab"]["dhcp"]
    asked = {k: stats[k] for k in ("discover", "request", "inform", "offer", "ack")}
    leases = [row for row in api.call(host.lab.run_dir, "GET", "/v1/leases") if row["mac"] == MAC]
    return asked, leases


NO_DHCP: tuple[dict[str, int], list[dict[str, Any]]] = (
    {"discover": 0, "request": 0, "inform": 0, "offer": 0, "ack": 0}, [])


def test_migration_keeps_address_and_filter_and_leaves_source_clean(
    hosts: tuple[Host, Host],
) -> None:
    a, b = hosts
    # (1) the guest starts on A
    ok(a.hook("prepare", "begin"))
    assert (links(a.ns)[TAP]["master"], a.guests()["mig1"]["ip"]) == (BRIDGE, IP_GUEST)
    nic_a = TapGuest(a.ns, TAP)
    nics = [nic_a]
    try:
        check_filtering(a, nic_a)
        others = {n: links(a.ns)[n] for n in (PEER_PORT, BRIDGE)}
        a_before = a.elements()
        ours = {e for e in a_before if mentions(e, MAC, f'"{TAP}"', f'"{IP_GUEST}"')}
        assert ours, "no element of the guest on A"

        # (2) migrate: destination first, then the source lets go
        b_base = b.elements()
        ok(b.hook("migrate", "begin"))  # exit 0, nothing on stderr, and stdout empty: libvirt keeps its XML
        ok(b.hook("prepare", "begin"))
        port = links(b.ns)[TAP]
        assert (port["master"], port["ifalias"]) == (BRIDGE, "vnet:lab:port:mig1")
        assert mentions(" ".join(b.elements()), MAC, f'"{TAP}"', f'"{IP_GUEST}"') == \
            [MAC, f'"{TAP}"', f'"{IP_GUEST}"']  # bound and filtered before QEMU runs there
        nic_b = TapGuest(b.ns, TAP)  # the incoming QEMU holds its TAP first
        nics.append(nic_b)
        nic_a.close()  # the source QEMU exits after the handover
        ok(a.hook("release", "end"))
        assert guest_traces(a, MAC, TAP, IP_GUEST) == []
        assert set(a.guests()) == {"peer"}
        for name, before in others.items():  # the peer's port and the bridge: untouched
            now = links(a.ns)[name]
            assert [now.get(k) for k in ("ifindex", "master", "ifalias", "operstate")] == \
                [before.get(k) for k in ("ifindex", "master", "ifalias", "operstate")], name
        assert a.elements() == a_before - ours  # only the guest's elements went

        # (3) on B: same address, same filtering, and no DHCP exchange on either host
        check_filtering(b, nic_b)
        assert dhcp_asked(b) == NO_DHCP, dhcp_asked(b)
        assert dhcp_asked(a) == NO_DHCP, dhcp_asked(a)

        # (4) stop on B
        nic_b.close()
        ok(b.hook("release", "end"))
        assert guest_traces(b, MAC, TAP, IP_GUEST) == []
        assert set(b.guests()) == {"peer"}
        assert b.elements() == b_base  # the peer's elements as they were before the guest came
        ok(b.hook("release", "end"))  # libvirt may call it again: nothing to do
    finally:
        for nic in nics:
            nic.close()


def test_gc_removes_a_guest_that_vanished(host_b: Host) -> None:
    b = host_b
    before = b.elements()
    for guest, mac in (("gone1", GC_MAC), ("keep1", KEEP_MAC)):
        port = api.call(b.lab.run_dir, "POST", "/v1/networks/lab/guests",
                        {"guest": guest, "mac": mac})
        assert port["ifname"] == f"lab-{guest}"
        assert mentions(" ".join(b.elements()), mac, f'"lab-{guest}"') == [mac, f'"lab-{guest}"']
    nic = TapGuest(b.ns, "lab-gone1")
    nic.kill()  # QEMU died: no release, no API call
    assert "lab-gone1" in links(b.ns)
    gc = sh(VNET, "gc", "lab", "--live", "keep1", "--run-dir", str(b.lab.run_dir))
    assert gc.stdout == "removed lab/gone1\n"
    assert guest_traces(b, GC_MAC, "lab-gone1") == []
    assert "lab-keep1" in links(b.ns)
    assert set(b.guests()) == {"peer", "keep1"}
    gc = sh(VNET, "gc", "lab", "--live", "--run-dir", str(b.lab.run_dir))
    assert gc.stdout == "removed lab/keep1\n"
    assert guest_traces(b, KEEP_MAC, "lab-keep1") == []
    assert b.elements() == before
