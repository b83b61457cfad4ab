"""A real Linux guest on a nat network, its port made by vnet and bound by QEMU's ``script=``.

The host namespace runs ``vnet daemon`` (it applies L2 itself) for network ``lab``: bridge
vn-lab, DHCP with reservations, DNS for ``lab.test``, ``clean-traffic`` on every port, an
uplink veth ``up0`` to an "upstream" namespace. Two guests, both declared in the file:

* ``vm1``: ``port: tap, ifname: vm1tap``. vnet makes the TAP at apply; QEMU (TCG, Debian
  kernel + busybox initramfs from ``tests.guestvm``, direct boot) opens it with
  ``script=contrib/qemu/vnet-ifup,downscript=contrib/qemu/vnet-ifdown``. ``vnet`` on QEMU's
  PATH is a recorder that logs each hook call and its exit code, then runs the venv's vnet.
* ``web``: ``port: veth, netns: W`` with policy ``web-server`` (tcp 80/443 in, default drop):
  listeners on tcp 80 and 8080 in W record their peers, a sniffer on W's eth0 sees every
  frame that arrives.

The guest's script (passed with ``-fw_cfg``, run by the initramfs's ``/init``, which reboots
afterwards; ``-no-reboot`` turns that into QEMU exiting) prints one ``E2E KEY VALUE`` line per
check: lease, DNS answer, tcp 80 (allowed), tcp 8080 (denied), upstream through NAT, an honest
ping, and a ping from a forged source address. A sniffer on ``vm1tap`` in the host proves the
forged packets left the guest; the one in W proves they never arrived. A watchdog kills QEMU
by PID.

Run: ``VNET_TEST_NS_PREFIX=... .venv/bin/pytest integration/test_guest_e2e.py -q`` (root,
QEMU, /dev/net/tun; the guest assets are built or reused under /tmp).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, VNET, NetnsFactory, ns_exec, sh, veth_into
from tests.guestvm import prepare_assets
from tests.priv.dhcp_env import DhcpLab
from tests.priv.test_filter import Sniffer, TcpServer

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, ICMP, TCP = scapy_all.Ether, scapy_all.IP, scapy_all.ICMP, scapy_all.TCP

pytestmark = pytest.mark.priv

QEMU = "qemu-system-x86_64"
IFUP = REPO / "contrib" / "qemu" / "vnet-ifup"
IFDOWN = REPO / "contrib" / "qemu" / "vnet-ifdown"
GATEWAY = "10.77.10.1"
VM1_MAC, VM1_IP, VM1_TAP = "52:54:00:00:0a:21", "10.77.10.21", "vm1tap"
WEB_MAC, WEB_IP = "52:54:00:00:0a:22", "10.77.10.22"
FORGED_IP = "10.77.10.99"
HOST_UP, UPSTREAM, UPSTREAM_PORT = "198.51.100.1", "198.51.100.2", 7000
BOOT_TIMEOUT = 40.0

CONFIG = f"""\
name: lab
mode: nat
bridge: {{name: vn-lab}}
uplink: up0
ipv4:
  address: {GATEWAY}/24
  dhcp:
    ranges: [10.77.10.100-10.77.10.150]
    lease-time: 1h
    reservations:
      - {{mac: "{VM1_MAC}", ip: {VM1_IP}, name: vm1}}
      - {{mac: "{WEB_MAC}", ip: {WEB_IP}, name: web}}
dns: {{domain: lab.test}}
policies: [clean-traffic]
guests:
  - {{name: vm1, mac: "{VM1_MAC}", ifname: {VM1_TAP}, port: tap}}
  - {{name: web, mac: "{WEB_MAC}", port: veth, netns: {{web_ns}}, policies: [web-server]}}
"""

# Run in the guest (busybox sh). Every probe is bounded (-w / -W / timeout) so a dropped
# packet costs seconds, never the watchdog. The udhcpc hook only configures eth0.
GUEST_SCRIPT = f"""\
cat > /tmp/lease.sh <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${{mask:-24}}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    echo "$ip" > /tmp/lease.ip ;;
esac
exit 0
EOF
chmod +x /tmp/lease.sh
ip link set lo up
ip link set eth0 up
say() {{ echo "E2E $*"; }}
tcp() {{ echo ping | timeout 5 nc -w 2 "$1" "$2" 2>/dev/null | grep -q pong && echo ok || echo fail; }}
if udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /tmp/lease.sh >/dev/null 2>&1; then
  say LEASE "$(cat /tmp/lease.ip)"
else
  say LEASE none
fi
answer=$(timeout 5 nslookup web.lab.test {GATEWAY} 2>&1 \\
  | awk '/^Name:/ {{n=1}} n && /^Address/ {{print $NF; exit}}')
say DNS "${{answer:-none}}"
say ALLOWED "$(tcp {WEB_IP} 80)"
say DENIED "$(tcp {WEB_IP} 8080)"
say NAT "$(tcp {UPSTREAM} {UPSTREAM_PORT})"
ping -c 1 -W 2 {WEB_IP} >/dev/null 2>&1 && say PING ok || say PING fail
ip addr add {FORGED_IP}/32 dev eth0
ping -c 2 -W 1 -I {FORGED_IP} {WEB_IP} >/dev/null 2>&1 && say FORGED answered || say FORGED sent
say DONE
"""

MARKER = re.compile(r"^E2E (\w+) ?(.*)$")


@dataclass
class Boot:
    console: str  # every line stamped with seconds since QEMU started
    markers: dict[str, str]
    exited: bool
    returncode: int | None
    seconds: float


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which(QEMU) is None:
        return f"no {QEMU}"
    return None


def hook_env(lab: DhcpLab, tmp: Path) -> tuple[dict[str, str], Path]:
    """QEMU's environment: ``vnet`` on PATH logs ``ARGS`` and ``rc=N ARGS`` for each hook call
    around the venv's vnet; VNET_RUN_DIR is the lab's."""
    bindir, log = tmp / "bin", tmp / "hooks.log"
    bindir.mkdir()
    recorder = bindir / "vnet"
    q = shlex.quote
    recorder.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {q(str(log))}\n"
        f"{q(VNET)} \"$@\"\n"
        "rc=$?\n"
        f"printf 'rc=%s %s\\n' \"$rc\" \"$*\" >> {q(str(log))}\n"
        "exit $rc\n"
    )
    recorder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "VNET_BIN"}
    env["PATH"] = f"{bindir}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["VNET_RUN_DIR"] = str(lab.run_dir)
    return env, log


def boot_vm1(host: str, script: Path, env: dict[str, str]) -> Boot:
    """Boot the guest on ``vm1tap`` inside ``host`` until QEMU exits (watchdog: by PID)."""
    assets = prepare_assets()
    cmd = [
        "ip", "netns", "exec", host, QEMU, "-accel", "tcg", "-cpu", "max", "-m", "512",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-monitor", "none",
        "-kernel", str(assets.vmlinux), "-initrd", str(assets.initramfs),
        "-append", "console=ttyS0 panic=-1 quiet mitigations=off",
        "-fw_cfg", f"name=opt/vnet/init,file={script}",
        "-netdev", f"tap,id=n0,ifname={VM1_TAP},script={IFUP},downscript={IFDOWN}",
        "-device", f"virtio-net-pci,netdev=n0,mac={VM1_MAC}",
    ]
    started = time.monotonic()
    # `ip netns exec` execs QEMU: this pid is QEMU's.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    watchdog = threading.Timer(BOOT_TIMEOUT, proc.kill)  # by PID: the process we started
    watchdog.start()
    lines: list[str] = []
    markers: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            lines.append(f"[{time.monotonic() - started:5.1f}] {text}")
            if m := MARKER.match(text.strip()):
                markers.setdefault(m.group(1), m.group(2).strip())
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    seconds = time.monotonic() - started
    return Boot("\n".join(lines), markers, seconds < BOOT_TIMEOUT, proc.returncode, seconds)


def link(ns: str, ifname: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(
        sh("ip", "-n", ns, "-j", "-d", "link", "show", ifname).stdout)
    return found[0]


def ipv4_packets(frames: list[bytes]) -> list[Any]:
    """The IPv4 packets among sniffed Ethernet frames (scapy objects)."""
    parsed = (Ether(f) for f in frames)
    return [p[IP] for p in parsed if IP in p]


def icmp_echoes(frames: list[bytes], src: str, dst: str) -> int:
    return sum(1 for p in ipv4_packets(frames)
               if p.src == src and p.dst == dst and ICMP in p and p[ICMP].type == 8)


def syns_to(frames: list[bytes], dst: str, dport: int) -> int:
    return sum(1 for p in ipv4_packets(frames)
               if p.dst == dst and TCP in p and p[TCP].dport == dport and p[TCP].flags.S)


@dataclass
class E2ELab:
    lab: DhcpLab
    web: str
    upstream: str


@pytest.fixture
def e2e_lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[E2ELab]:
    if reason := _missing():
        pytest.skip(reason)
    web = netns_factory("w")
    upstream = netns_factory("u")
    lab = DhcpLab(netns_factory, tmp_path, CONFIG.replace("{web_ns}", web), manual_l2=False)
    try:
        veth_into(lab.host, upstream, "up0")  # the uplink: a foreign link vnet only names
        sh("ip", "-n", lab.host, "addr", "add", f"{HOST_UP}/24", "dev", "up0")
        sh("ip", "-n", upstream, "addr", "add", f"{UPSTREAM}/24", "dev", "eth0")
        yield E2ELab(lab, web, upstream)
    finally:
        lab.close()


def test_linux_guest_on_a_hook_bound_port(e2e_lab: E2ELab, tmp_path: Path) -> None:
    began = time.monotonic()
    lab, web, upstream = e2e_lab.lab, e2e_lab.web, e2e_lab.upstream
    prepare_assets()  # built once and cached; not part of the guest's timing
    lab.start_daemon()
    made = link(lab.host, VM1_TAP)  # vnet made the TAP at apply, before any QEMU
    assert (made["ifalias"], made["master"]) == ("vnet:lab:port:vm1", "vn-lab"), made
    lab.udhcpc(web)  # web takes its reservation like any guest
    assert lab.event("udhcpc", "bound")["ip"] == WEB_IP
    servers = {port: TcpServer(web, port) for port in (80, 8080)}
    up = TcpServer(upstream, UPSTREAM_PORT)
    at_web, at_tap = Sniffer(web, "eth0"), Sniffer(lab.host, VM1_TAP)
    script = tmp_path / "guest-init.sh"
    script.write_text(GUEST_SCRIPT)
    env, hooks = hook_env(lab, tmp_path)
    try:
        boot = boot_vm1(lab.host, script, env)
    finally:
        at_web.stop()
        at_tap.stop()
        for s in (*servers.values(), up):
            s.close()
    log = (f"QEMU {'exited ' + str(boot.returncode) if boot.exited else 'killed'} after "
           f"{boot.seconds:.1f} s; markers {boot.markers}\n--- console ---\n{boot.console[-6000:]}"
           f"\n--- hooks ---\n{hooks.read_text() if hooks.exists() else ''}"
           f"\n--- daemon (tail) ---\n{lab.logtext()[-3000:]}")
    m = boot.markers
    assert "DONE" in m, log
    assert boot.exited, log  # marker seen AND QEMU gone
    assert m["LEASE"] == VM1_IP, log
    lease = next((line for line in lab.leases().splitlines() if VM1_MAC in line), "")
    assert VM1_IP in lease.split(), lab.leases()
    assert m["DNS"] == WEB_IP, log
    assert m["ALLOWED"] == "ok", log
    assert servers[80].peers == [VM1_IP], log
    assert m["DENIED"] == "fail", log
    assert servers[8080].peers == [], servers[8080].peers
    assert syns_to(at_tap.frames, WEB_IP, 8080) > 0, "the guest never tried tcp 8080"
    assert syns_to(at_web.frames, WEB_IP, 8080) == 0, "a SYN to the denied port reached web"
    assert m["NAT"] == "ok", log
    assert up.peers == [HOST_UP], up.peers  # masqueraded to the uplink's address
    assert m["PING"] == "ok", log
    assert icmp_echoes(at_web.frames, VM1_IP, WEB_IP) >= 1, "the honest ping never reached web"
    assert m["FORGED"] == "sent", log
    assert icmp_echoes(at_tap.frames, FORGED_IP, WEB_IP) >= 1, "the forged ping never left vm1"
    assert icmp_echoes(at_web.frames, FORGED_IP, WEB_IP) == 0, "a forged source reached web"
    # The hooks: ifup bound the port before the guest started, ifdown ran as QEMU exited.
    assert hooks.read_text().splitlines() == [
        f"hook qemu-ifup {VM1_TAP}", f"rc=0 hook qemu-ifup {VM1_TAP}",
        f"hook qemu-ifdown {VM1_TAP}", f"rc=0 hook qemu-ifdown {VM1_TAP}",
    ], log
    left = link(lab.host, VM1_TAP)  # vnet's TAP outlives QEMU, still the guest's port
    assert (left["ifindex"], left["master"]) == (made["ifindex"], "vn-lab"), left
    dirs = ["--config-dir", str(lab.config_dir), "--state-dir", str(lab.state_dir),
            "--run-dir", str(lab.run_dir), "--policy-dir", str(lab.tmp / "nopolicies")]
    plan = ns_exec(lab.host, VNET, "plan", *dirs, timeout=30).stdout.strip()
    assert plan == "no changes", plan
    assert time.monotonic() - began < 60, f"took {time.monotonic() - began:.1f} s\n{log}"
