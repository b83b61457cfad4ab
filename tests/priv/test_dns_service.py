"""DNS acceptance: real kdig clients in guest namespaces against vnet's DNS service.

Topology (all namespaces owned by the test): the host namespace has a bridge with the network's
gateway address and a guest on it; an upstream namespace runs dnsmasq as the forwarder; an
outside namespace is routed to the gateway address but not in the subnet (must be refused).
The service runs in the host namespace in a helper process (this module run with ``serve``),
which turns lines on its stdin into lease events, so names come and go without a restart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import REPO, NetnsFactory, ns_exec, sh, veth_into, wait_for

GW = "10.77.0.1"
GUEST = "10.77.0.10"
UPSTREAM = "203.0.113.2"
OUTSIDE = "198.51.100.2"
BIG_TXT = "x" * 900  # > 512 bytes: truncated over plain UDP, whole over TCP


@dataclass
class Lab:
    host: str
    guest: str
    upstream: str
    outside: str
    server: subprocess.Popen[str]

    def tell(self, line: str) -> None:
        stdin: IO[str] = self.server.stdin  # type: ignore[assignment]
        stdin.write(line + "\n")
        stdin.flush()

    def stats(self) -> dict[str, int]:
        self.tell("stats")
        stdout: IO[str] = self.server.stdout  # type: ignore[assignment]
        return json.loads(stdout.readline())  # type: ignore[no-any-return]


def kdig(ns: str, *args: str, server: str = GW) -> str:
    return ns_exec(ns, "kdig", f"@{server}", "+time=2", "+retry=1", *args, timeout=30).stdout


def short(ns: str, *args: str) -> list[str]:
    return kdig(ns, "+short", *args).split()


SPEC: dict[str, Any] = {
    "name": "lab",
    "address": f"{GW}/24",
    "domain": "lab.vnet",
    "forwarders": [UPSTREAM],
    "reservations": [["52:54:00:00:00:05", "10.77.0.5", "db"]],
    "records": [
        ["www", "CNAME", "db", 300],
        ["files", "A", "10.77.0.20", 300],
        ["v6", "AAAA", "fd00::20", 300],
        ["info", "TXT", "hello world", 300],
        ["big", "TXT", BIG_TXT, 300],
        ["_http._tcp", "SRV", "10 5 80 files", 300],
    ],
}


@pytest.fixture
def lab(netns_factory: NetnsFactory) -> Iterator[Lab]:
    host, guest = netns_factory("h"), netns_factory("g")
    upstream, outside = netns_factory("u"), netns_factory("o")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "addr", "add", f"{GW}/24", "dev", "br0")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    veth_into(host, guest, "vg1")
    sh("ip", "-n", host, "link", "set", "vg1", "master", "br0")
    sh("ip", "-n", guest, "addr", "add", f"{GUEST}/24", "dev", "eth0")
    for ns, hif, net in ((upstream, "vu1", "203.0.113"), (outside, "vo1", "198.51.100")):
        veth_into(host, ns, hif)
        sh("ip", "-n", host, "addr", "add", f"{net}.1/24", "dev", hif)
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{net}.1")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # The upstream: dnsmasq answering fwd.example names, and a big TXT that needs TCP.
    ns_exec(
        upstream, "dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--bind-interfaces", f"--listen-address={UPSTREAM}", "--pid-file=",
        "--address=/fwd.example/192.0.2.7", "--local-ttl=300", "--user=root", "--group=root",
        f"--txt-record=big.fwd.example,{'y' * 250},{'z' * 250},{'w' * 250}",
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", host, sys.executable, "-m", "tests.priv.test_dns_service", "serve",
         json.dumps(SPEC)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "READY", "DNS helper did not start"
        yield Lab(host, guest, upstream, outside, server)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


@pytest.mark.priv
def test_local_names_resolve_from_a_guest(lab: Lab) -> None:
    assert short(lab.guest, "db.lab.vnet", "A") == ["10.77.0.5"]
    assert short(lab.guest, "files.lab.vnet", "A") == ["10.77.0.20"]
    assert short(lab.guest, "www.lab.vnet", "A") == ["db.lab.vnet.", "10.77.0.5"]
    assert short(lab.guest, "v6.lab.vnet", "AAAA") == ["fd00::20"]
    assert short(lab.guest, "info.lab.vnet", "TXT") == ['"hello', 'world"']
    assert short(lab.guest, "_http._tcp.lab.vnet", "SRV") == ["10", "5", "80", "files.lab.vnet."]
    assert short(lab.guest, "-x", "10.77.0.5") == ["db.lab.vnet."]
    assert short(lab.guest, "-x", GW) == ["ns.lab.vnet."]


@pytest.mark.priv
def test_nxdomain_and_nodata_are_told_apart(lab: Lab) -> None:
    out = kdig(lab.guest, "nothere.lab.vnet", "A")
    assert "status: NXDOMAIN" in out
    assert "Flags: qr aa" in out
    assert "SOA" in out
    out = kdig(lab.guest, "db.lab.vnet", "AAAA")
    assert "status: NOERROR" in out
    assert "ANSWER: 0" in out
    assert "SOA" in out
    assert "status: NXDOMAIN" in kdig(lab.guest, "-x", "10.77.0.99")


@pytest.mark.priv
def test_lease_names_come_and_go_without_restart(lab: Lab) -> None:
    assert "status: NXDOMAIN" in kdig(lab.guest, "alpha.lab.vnet", "A")
    lab.tell("bound 52:54:00:00:00:31 10.77.0.31 Alpha")
    assert wait_for(lambda: short(lab.guest, "alpha.lab.vnet", "A") == ["10.77.0.31"])
    assert short(lab.guest, "-x", "10.77.0.31") == ["alpha.lab.vnet."]
    lab.tell("expired 52:54:00:00:00:31 10.77.0.31")
    assert wait_for(lambda: "status: NXDOMAIN" in kdig(lab.guest, "alpha.lab.vnet", "A"))
    assert "status: NXDOMAIN" in kdig(lab.guest, "-x", "10.77.0.31")
    # A client cannot take over a configured name.
    lab.tell("bound 52:54:00:00:00:32 10.77.0.32 db")
    assert wait_for(lambda: lab.stats()["zone_rebuilds"] >= 3)
    assert short(lab.guest, "db.lab.vnet", "A") == ["10.77.0.5"]


@pytest.mark.priv
def test_forwarded_name_resolves_through_upstream(lab: Lab) -> None:
    assert short(lab.guest, "host.fwd.example", "A") == ["192.0.2.7"]
    out = kdig(lab.guest, "host.fwd.example", "A")
    assert "Flags: qr rd ra" in out  # not authoritative, recursion available
    stats = lab.stats()
    assert stats["forward_cache_hits"] + stats["relayed_hits"] >= 1  # asked upstream once
    assert stats["forwarded"] == 1
    # The upstream's big answer is truncated over UDP; vnet asks again over TCP and so can we.
    out = kdig(lab.guest, "+notcp", "+ignore", "+noedns", "big.fwd.example", "TXT")
    assert "tc" in out.split("Flags:")[1].split(";")[0]
    assert "y" * 250 in kdig(lab.guest, "big.fwd.example", "TXT")


@pytest.mark.priv
def test_truncated_local_answer_falls_back_to_tcp(lab: Lab) -> None:
    out = kdig(lab.guest, "+notcp", "+ignore", "+noedns", "big.lab.vnet", "TXT")
    assert "Flags: qr aa tc rd ra" in out
    out = kdig(lab.guest, "+noedns", "big.lab.vnet", "TXT")  # kdig retries over TCP itself
    assert "x" * 255 in out
    out = kdig(lab.guest, "+tcp", "big.lab.vnet", "TXT")
    assert "x" * 255 in out
    out = kdig(lab.guest, "+bufsize=1232", "big.lab.vnet", "TXT")  # EDNS0 lets it fit in UDP
    assert "x" * 255 in out
    assert "EDNS PSEUDOSECTION" in out


@pytest.mark.priv
def test_outside_client_is_refused(lab: Lab) -> None:
    for extra in ((), ("+tcp",)):
        out = kdig(lab.outside, *extra, "db.lab.vnet", "A")
        assert "status: REFUSED" in out
        out = kdig(lab.outside, *extra, "host.fwd.example", "A")
        assert "status: REFUSED" in out
    assert lab.stats()["forwarded"] == 0


@pytest.mark.priv
def test_garbage_does_not_stop_the_server(lab: Lab) -> None:
    script = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(300):\n"
        f"    s.sendto(os.urandom(i % 40), ('{GW}', 53))\n"
        f"s.sendto(b'\\x00\\x01\\x80' + bytes(9), ('{GW}', 53))\n"
        f"t = socket.create_connection(('{GW}', 53))\n"
        "t.sendall(b'\\x00\\x05hello\\x00\\x00')\n"
        "t.close()\n"
    )
    ns_exec(lab.guest, sys.executable, "-c", script)
    assert short(lab.guest, "db.lab.vnet", "A") == ["10.77.0.5"]
    assert short(lab.guest, "+tcp", "db.lab.vnet", "A") == ["10.77.0.5"]


def _network(spec: dict[str, Any]) -> Any:
    from vnet.model import (
        DhcpSpec,
        DnsForwarder,
        DnsRecord,
        DnsSpec,
        Ipv4Spec,
        Mode,
        Network,
        Reservation,
    )

    return Network(
        name=spec["name"],
        mode=Mode.ISOLATED,
        ipv4=Ipv4Spec(
            ipaddress.IPv4Interface(spec["address"]),
            DhcpSpec(reservations=tuple(
                Reservation(mac, ipaddress.IPv4Address(ip), name)
                for mac, ip, name in spec.get("reservations", [])
            )),
        ),
        dns=DnsSpec(
            domain=spec.get("domain"),
            forwarders=tuple(DnsForwarder(f) for f in spec.get("forwarders", [])),
            records=tuple(DnsRecord(*r) for r in spec.get("records", [])),
        ),
    )


def serve(spec_json: str) -> int:
    """Helper process: run the DNS service for the spec; stdin lines publish lease events."""
    import time

    from vnet.events import EventBus, LeaseEvent, LeaseState
    from vnet.serve import ServiceContext
    from vnet.serve.dns import DnsService

    spec = json.loads(spec_json)
    network = _network(spec)
    bus = EventBus()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ServiceContext(Path(tmp), Path(tmp), bus)
        service = DnsService(network, ctx, port=spec.get("port", 53))
        service.start()
        print("READY", flush=True)
        try:
            for line in sys.stdin:
                words = line.split()
                if not words:
                    continue
                if words[0] == "stats":
                    print(json.dumps(service.stats()), flush=True)
                    continue
                state = LeaseState(words[0])
                host = words[3] if len(words) > 3 else None
                bus.publish(LeaseEvent(network.name, state, words[1],
                                       ipaddress.IPv4Address(words[2]), host, time.time() + 600))
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        sys.exit(serve(sys.argv[2]))
    sys.exit("usage: python -m tests.priv.test_dns_service serve SPEC_JSON")
