"""Filter policies against real packets: a "host" namespace with a bridge, guests on veth ports,
an "upstream" namespace behind NAT. Every address lives inside namespaces these tests create.

Each drop check is paired with the same traffic done honestly, which must pass: a filter that
drops everything would fail these tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import NetnsFactory, ns_exec, sh, veth_into, wait_for
from vnet.events import EventBus, LeaseEvent, LeaseState
from vnet.model import (
    BridgeSpec,
    Guest,
    Ipv4Spec,
    Mode,
    Model,
    Network,
    PortForward,
    UplinkSpec,
)

pytestmark = pytest.mark.priv

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, IPv6, UDP, ARP, BOOTP = (scapy_all.Ether, scapy_all.IP, scapy_all.IPv6,
                                    scapy_all.UDP, scapy_all.ARP, scapy_all.BOOTP)
ICMPv6ND_RA, ICMPv6EchoRequest = scapy_all.ICMPv6ND_RA, scapy_all.ICMPv6EchoRequest

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x4000_0000
ETH_P_ALL = 0x0003

IP4 = ipaddress.IPv4Address
MAC = {"a": "52:54:00:00:00:0a", "b": "52:54:00:00:00:0b", "c": "52:54:00:00:00:0c",
       "web1": "52:54:00:00:00:01"}
IPS = {"a": "10.77.0.11", "b": "10.77.0.12", "web1": "10.77.0.10"}
GATEWAY = "10.77.0.1"
HOST_UP, UPSTREAM = "198.51.100.1", "198.51.100.2"
BRIDGE_MAC = "52:54:00:ff:ff:01"


def _enter(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a thread that has joined ``ns`` (network namespaces are per thread)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _enter(ns)
            box["value"] = fn(*args)
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Sniffer:
    """Collects every frame that reaches ``ifname`` in ``ns`` (AF_PACKET), from start to stop."""

    def __init__(self, ns: str, ifname: str = "eth0") -> None:
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ns, ifname), daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "sniffer did not start"

    def _run(self, ns: str, ifname: str) -> None:
        _enter(ns)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
            sock.bind((ifname, 0))
            sock.settimeout(0.05)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    data, addr = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                if addr[2] != socket.PACKET_OUTGOING:
                    self.frames.append(data)

    def saw(self, marker: bytes, timeout: float) -> bool:
        return wait_for(lambda: any(marker in f for f in self.frames), timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def send_frame(ns: str, frame: bytes, ifname: str = "eth0") -> None:
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            sock.send(frame)

    in_netns(ns, send)


def tcp_connect(ns: str, host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to host:port is established (and answered) within timeout."""

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"ping\n")
            return sock.recv(16).startswith(b"pong")

    try:
        return bool(in_netns(ns, connect))
    except OSError:
        return False


@dataclass
class TcpServer:
    """Accepts connections on ``port`` in ``ns``, answers ``pong`` and records peers."""

    ns: str
    port: int
    peers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        ready = threading.Event()
        self._sock: socket.socket | None = None

        def run() -> None:
            _enter(self.ns)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", self.port))
            sock.listen(16)
            self._sock = sock
            ready.set()
            while True:
                try:
                    conn, peer = sock.accept()
                except OSError:
                    return
                with conn:
                    self.peers.append(peer[0])
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.recv(16)
                        conn.sendall(b"pong\n")

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self._thread.join(5)


def make_model(mode: Mode = Mode.NAT) -> Model:
    guests = (
        Guest("a", MAC["a"], "lab-a", ip=IP4(IPS["a"])),
        Guest("b", MAC["b"], "lab-b", ip=IP4(IPS["b"])),
        Guest("c", MAC["c"], "lab-c"),
        Guest("web1", MAC["web1"], "lab-web1", policies=("web-server",), ip=IP4(IPS["web1"])),
    )
    net = Network(
        name="lab",
        mode=mode,
        bridge=BridgeSpec("vn-lab"),
        uplink=UplinkSpec(ifname="up0"),
        ipv4=Ipv4Spec(ipaddress.IPv4Interface(f"{GATEWAY}/24")),
        policies=("clean-traffic",),
        guests=guests,
        forwards=(PortForward("tcp", 8080, "web1", 80),) if mode == Mode.NAT else (),
    )
    return Model((net,))


@dataclass
class Topo:
    host: str
    upstream: str
    guests: dict[str, str]
    model: Model

    def apply(self, model: Model | None = None, leases: Any = None, library: Any = None) -> None:
        from vnet.host import nft
        from vnet.policy import compile_ruleset, load_library

        self.model = model or self.model
        doc = compile_ruleset(self.model, library or load_library(None), leases or {})
        in_netns(self.host, nft.replace, doc)

    def handles(self) -> dict[str, list[tuple[str, int]]]:
        from vnet.host import nft

        out: dict[str, list[tuple[str, int]]] = {}
        for family in ("bridge", "inet"):
            items = in_netns(self.host, nft.list_table, family) or []
            out[family] = sorted(
                (str(x[k].get("chain", x[k].get("name"))), int(x[k]["handle"]))
                for x in items for k in ("table", "chain", "rule") if k in x
            )
        return out


@pytest.fixture
def topo(netns_factory: NetnsFactory) -> Topo:
    host = netns_factory("h")
    upstream = netns_factory("u")
    sh("ip", "-n", host, "link", "add", "vn-lab", "address", BRIDGE_MAC, "type", "bridge")
    sh("ip", "-n", host, "addr", "add", f"{GATEWAY}/24", "dev", "vn-lab")
    sh("ip", "-n", host, "link", "set", "vn-lab", "up")
    ns_exec(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for key in ("iptables", "ip6tables"):
        value = ns_exec(host, "sysctl", "-n", f"net.bridge.bridge-nf-call-{key}").stdout.strip()
        assert value == "1", f"bridge-nf-call-{key} is {value} in a new netns"
    guests: dict[str, str] = {}
    for name in ("a", "b", "c", "web1"):
        ns = netns_factory(name[:1])
        guests[name] = ns
        veth_into(host, ns, f"lab-{name}", mac=MAC[name])
        sh("ip", "-n", host, "link", "set", f"lab-{name}", "master", "vn-lab")
        if name in IPS:
            sh("ip", "-n", ns, "addr", "add", f"{IPS[name]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
    veth_into(host, upstream, "up0")
    sh("ip", "-n", host, "addr", "add", f"{HOST_UP}/24", "dev", "up0")
    sh("ip", "-n", upstream, "addr", "add", f"{UPSTREAM}/24", "dev", "eth0")
    return Topo(host, upstream, guests, make_model())


def udp_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, marker: bytes,
              sport: int = 40000, dport: int = 9999) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip)
                 / UDP(sport=sport, dport=dport) / marker)


def test_spoofed_traffic_is_dropped_and_honest_traffic_passes(topo: Topo) -> None:
    topo.apply()
    a, b = topo.guests["a"], topo.guests["b"]
    sniffer = Sniffer(b)
    try:
        def check(name: str, forged: bytes, honest: bytes) -> None:
            send_frame(a, honest)
            assert sniffer.saw(b"honest-" + name.encode(), 3), f"{name}: honest traffic lost"
            send_frame(a, forged)
            assert not sniffer.saw(b"forged-" + name.encode(), 0.5), f"{name}: not dropped"

        check("mac",
              udp_frame("52:54:00:66:66:66", IPS["a"], MAC["b"], IPS["b"], b"forged-mac"),
              udp_frame(MAC["a"], IPS["a"], MAC["b"], IPS["b"], b"honest-mac"))
        check("ip",
              udp_frame(MAC["a"], "10.77.0.99", MAC["b"], IPS["b"], b"forged-ip"),
              udp_frame(MAC["a"], IPS["a"], MAC["b"], IPS["b"], b"honest-ip"))
        bcast = "ff:ff:ff:ff:ff:ff"

        def garp(ip: str, marker: bytes) -> bytes:
            return bytes(Ether(src=MAC["a"], dst=bcast) / ARP(
                op=2, hwsrc=MAC["a"], psrc=ip, hwdst=bcast, pdst=ip) / marker)

        check("garp", garp(IPS["b"], b"forged-garp"), garp(IPS["a"], b"honest-garp"))
        offer = bytes(Ether(src=MAC["a"], dst=bcast) / IP(src=IPS["a"], dst="255.255.255.255")
                      / UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr=IPS["b"])
                      / b"forged-dhcp")
        honest_bcast = udp_frame(MAC["a"], IPS["a"], bcast, "255.255.255.255", b"honest-dhcp",
                                 sport=40000, dport=68)
        check("dhcp", offer, honest_bcast)
        lla = "fe80::5054:ff:fe00:a"

        def icmp6(payload: Any, marker: bytes) -> bytes:
            return bytes(Ether(src=MAC["a"], dst="33:33:00:00:00:01")
                         / IPv6(src=lla, dst="ff02::1", hlim=255) / payload / marker)

        check("ra", icmp6(ICMPv6ND_RA(), b"forged-ra"),
              icmp6(ICMPv6EchoRequest(), b"honest-ra"))
    finally:
        sniffer.stop()


def test_web_server_ports_return_traffic_and_nat(topo: Topo) -> None:
    topo.apply()
    a, web = topo.guests["a"], topo.guests["web1"]
    servers = [TcpServer(web, port) for port in (80, 443, 8081)]
    servers.append(TcpServer(a, 5555))
    servers.append(up := TcpServer(topo.upstream, 7000))
    try:
        assert tcp_connect(a, IPS["web1"], 80)
        assert tcp_connect(a, IPS["web1"], 443)
        assert not tcp_connect(a, IPS["web1"], 8081, timeout=0.7)  # dropped: times out
        # web1's own connections: their replies come back in although inbound defaults to drop
        assert tcp_connect(web, IPS["a"], 5555)
        assert tcp_connect(web, UPSTREAM, 7000)
        assert ns_exec(a, "busybox", "ping", "-c1", "-W2", IPS["web1"], check=False).returncode == 0
        # nat: the upstream sees the host's address, not the guest's
        assert tcp_connect(a, UPSTREAM, 7000)
        assert up.peers[-1] == HOST_UP
        # a port forward reaches web1's port 80 from upstream
        assert tcp_connect(topo.upstream, HOST_UP, 8080)
        assert servers[0].peers[-1] == UPSTREAM
    finally:
        for s in servers:
            s.close()


def test_isolated_network_cannot_reach_upstream(topo: Topo) -> None:
    topo.apply(make_model(Mode.ISOLATED))
    a = topo.guests["a"]
    servers = [TcpServer(topo.upstream, 7000), TcpServer(topo.guests["b"], 5555)]
    try:
        assert tcp_connect(a, IPS["b"], 5555)  # the bridge still works
        assert not tcp_connect(a, UPSTREAM, 7000, timeout=0.7)
    finally:
        for s in servers:
            s.close()


def test_lease_moves_binding_without_recompile(topo: Topo) -> None:
    from vnet.host import nft
    from vnet.serve.filter import FilterService

    topo.apply()
    b = topo.guests["b"]
    net = topo.model.networks[0]
    events = EventBus()
    service = in_netns(topo.host, lambda: _started(FilterService(
        net, events, apply=lambda cmds: in_netns(topo.host, nft.update_elements, cmds),
        marks=lambda: in_netns(topo.host, nft.port_marks))))
    before = topo.handles()
    sniffer = Sniffer(b)
    try:
        n = 0

        def passes(src: str, guest: str = "c") -> bool:
            nonlocal n
            n += 1
            marker = f"lease-{src}-{n}".encode()
            send_frame(topo.guests[guest], udp_frame(MAC[guest], src, MAC["b"], IPS["b"], marker))
            return sniffer.saw(marker, 0.5)

        assert not passes("10.77.0.50")  # no lease yet: nothing bound
        events.publish(LeaseEvent("lab", LeaseState.BOUND, MAC["c"], IP4("10.77.0.50"), None, 0))
        assert passes("10.77.0.50")
        assert not passes("10.77.0.51")
        events.publish(LeaseEvent("lab", LeaseState.BOUND, MAC["c"], IP4("10.77.0.60"), None, 0))
        assert passes("10.77.0.60")
        assert not passes("10.77.0.50")
        # the address moves to guest a (c's lease ended without an event): only a may use it
        events.publish(LeaseEvent("lab", LeaseState.BOUND, MAC["a"], IP4("10.77.0.60"), None, 0))
        assert passes("10.77.0.60", "a")
        assert not passes("10.77.0.60")
        assert passes(IPS["a"], "a")  # its reservation stays bound
        events.publish(LeaseEvent("lab", LeaseState.EXPIRED, MAC["a"], IP4("10.77.0.60"), None, 0))
        assert not passes("10.77.0.60", "a")
        assert service.stats()["errors"] == 0
        assert service.stats()["updates"] == 4
        assert topo.handles() == before  # same tables, chains and rules: only elements changed
    finally:
        sniffer.stop()
        service.stop()


def _started(service: Any) -> Any:
    service.start()
    return service


def test_rejected_document_changes_nothing_and_names_the_rule(topo: Topo) -> None:
    from vnet.host import nft
    from vnet.policy import compile_ruleset, load_library

    topo.apply()
    before = topo.handles()
    doc = compile_ruleset(topo.model, load_library(None))
    doc["nftables"].append({"add": {"rule": {
        "family": "inet", "table": "vnet", "chain": "guest_out",
        "comment": "policies/broken.yaml:7 broken outbound #1",
        "expr": [{"jump": {"target": "no_such_chain"}}]}}})
    with pytest.raises(nft.NftError, match=r"policies/broken\.yaml:7"):
        in_netns(topo.host, nft.replace, doc)
    assert topo.handles() == before
    start = time.monotonic()
    in_netns(topo.host, nft.delete_tables)
    in_netns(topo.host, nft.delete_tables)  # gone already is fine
    assert in_netns(topo.host, nft.list_table, "inet") is None
    assert time.monotonic() - start < 5


def test_every_golden_document_is_accepted_by_the_kernel(netns_factory: NetnsFactory) -> None:
    from pathlib import Path

    from vnet.host import nft

    host = netns_factory("g")
    cases = Path(__file__).resolve().parent.parent / "unit" / "policy_cases"
    checked = 0
    for path in sorted(cases.glob("*.json")):
        doc = json.loads(path.read_text())
        if "nftables" not in doc:
            continue
        in_netns(host, nft.replace, doc)
        checked += 1
    assert checked >= 5
    # the last one applied is still there, and nothing else is
    assert in_netns(host, nft.list_table, "bridge") is not None
    in_netns(host, nft.delete_tables)


def _contents(items: list[Any]) -> tuple[list[str], dict[str, list[str]]]:
    """Rules (without handles) and set elements (sorted) of a listed table."""
    rules = [json.dumps(x["rule"]["expr"], sort_keys=True) for x in items if "rule" in x]
    sets = {}
    for x in items:
        for kind in ("set", "map"):
            if kind in x:
                sets[x[kind]["name"]] = sorted(json.dumps(e, sort_keys=True)
                                               for e in x[kind].get("elem", []))
    return rules, sets


def test_guest_changes_apply_as_element_changes(netns_factory: NetnsFactory) -> None:
    from dataclasses import replace

    from vnet.host import nft
    from vnet.policy import compile_ruleset, load_library
    from vnet.policy.compile import element_changes

    library = load_library(None)
    old_model = make_model()
    net = old_model.networks[0]
    guests = [g for g in net.guests if g.name != "b"]  # b leaves
    guests[0] = replace(guests[0], ip=IP4("10.77.0.111"))  # a's reservation changes
    guests.append(Guest("d", "52:54:00:00:00:0d", "lab-d", ip=IP4("10.77.0.13")))  # d joins
    new_model = Model((replace(net, guests=tuple(guests)),))
    old, new = compile_ruleset(old_model, library), compile_ruleset(new_model, library)
    changes = element_changes(old, new)
    assert changes is not None
    assert all(next(iter(c.values())).keys() == {"element"} for c in changes)

    incremental, full = netns_factory("i"), netns_factory("f")
    in_netns(incremental, nft.replace, old)
    handles_before = sorted(
        (x["rule"]["chain"], x["rule"]["handle"])
        for x in in_netns(incremental, nft.list_table, "inet") if "rule" in x)
    in_netns(incremental, nft.update_elements, changes)
    in_netns(full, nft.replace, new)
    for family in ("bridge", "inet"):
        got = in_netns(incremental, nft.list_table, family)
        want = in_netns(full, nft.list_table, family)
        assert _contents(got) == _contents(want), family
    handles_after = sorted(
        (x["rule"]["chain"], x["rule"]["handle"])
        for x in in_netns(incremental, nft.list_table, "inet") if "rule" in x)
    assert handles_after == handles_before
    # a new policy list needs new chains: no element-only path
    web = replace(guests[-1], policies=("deny-all",))
    other = Model((replace(net, guests=(*guests[:-1], web)),))
    assert element_changes(old, compile_ruleset(other, library)) is None


def test_host_access_only_dhcp_dns_tftp_unless_a_host_rule_allows(topo: Topo) -> None:
    from dataclasses import replace

    from vnet.policy import load_library
    from vnet.policy.library import library_from_texts

    library = library_from_texts({"ssh-to-host.yaml": (
        "host:\n  rules:\n    - {proto: tcp, dport: 2222, saddr: $IP, action: accept}\n")},
        load_library(None))
    net = topo.model.networks[0]
    guests = tuple(replace(g, policies=("ssh-to-host",)) if g.name == "a" else g
                   for g in net.guests)
    topo.apply(Model((replace(net, guests=guests),)), library=library)
    servers = [TcpServer(topo.host, 2222), TcpServer(topo.host, 53)]
    try:
        assert tcp_connect(topo.guests["a"], GATEWAY, 2222)
        assert not tcp_connect(topo.guests["b"], GATEWAY, 2222, timeout=0.7)
        assert tcp_connect(topo.guests["b"], GATEWAY, 53)  # DNS is always open to guests
    finally:
        for s in servers:
            s.close()
