#!/usr/bin/env python3
"""`make demo`: vnet's embedded default network with two demo guests, entirely in namespaces.

Creates a "host" namespace (the KVM host), an "upstream" namespace behind the host's uplink,
and two guest namespaces on veth ports of a nat network; runs `vnet apply` and the controller
daemon in the host namespace; the guests get DHCP leases, resolve names through vnet's DNS and
reach upstream through NAT. Shows topology and status; cleans everything up on exit or Ctrl-C.

    sudo .venv/bin/python demo/run.py [--wait | --no-wait]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
VNET = str(VENV_BIN / "vnet")
PREFIX = f"vndemo{os.getpid() % 100000}"
HOST, UP, G1, G2 = (f"{PREFIX}-{n}" for n in ("host", "up", "g1", "g2"))

NETWORK = """\
# The demo's network: what an administrator would write in /etc/vnet/networks/demo.yaml
name: demo
mode: nat
bridge: {{name: vn-demo}}
uplink: eth1
ipv4:
  address: 10.99.0.1/24
  dhcp:
    ranges: [10.99.0.100-10.99.0.199]
    lease-time: 1h
    reservations:
      - {{mac: "52:54:00:99:00:01", ip: 10.99.0.10, name: web1}}
dns:
  domain: demo.test
  hosts: [{{name: gateway.demo.test, ip: 10.99.0.1}}]
policies: [clean-traffic]
guests:
  - {{name: web1, mac: "52:54:00:99:00:01", port: veth, netns: {g1}}}
  - {{name: db1, mac: "52:54:00:99:00:02", port: veth, netns: {g2}}}
"""

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook for the demo: configure eth0 only (never touches /etc/resolv.conf)
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip $hostname $domain $dns" > "$LEASE_FILE.tmp" && mv -f "$LEASE_FILE.tmp" "$LEASE_FILE"
    ;;
esac
exit 0
"""

failures: list[str] = []


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip())
    if proc.returncode != 0 and check:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def check(what: str, ok: bool, detail: str = "") -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        failures.append(what)


def in_ns(ns: str, *cmd: str, check_rc: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *cmd, check=check_rc, quiet=quiet)


def setup_namespaces() -> None:
    for ns in (HOST, UP, G1, G2):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", HOST, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", UP)
    run("ip", "-n", HOST, "addr", "add", "10.200.0.1/24", "dev", "eth1")
    run("ip", "-n", HOST, "link", "set", "eth1", "up")
    run("ip", "-n", UP, "addr", "add", "10.200.0.2/24", "dev", "eth0")
    run("ip", "-n", UP, "link", "set", "eth0", "up")


def cleanup(daemon: subprocess.Popen[bytes] | None, vnet_args: list[str]) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    with contextlib.suppress(Exception):
        in_ns(HOST, VNET, *vnet_args, "down", check_rc=False, quiet=True)
    for ns in (G1, G2, UP, HOST):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wait", action="store_true", default=None,
                    help="keep running until Ctrl-C (the default on a terminal)")
    ap.add_argument("--no-wait", dest="wait", action="store_false", help="clean up right away")
    args = ap.parse_args()
    if args.wait is None:
        args.wait = sys.stdin.isatty()
    if os.geteuid() != 0:
        print("the demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="vnet-demo-"))
    cfg, state, rundir = tmp / "networks", tmp / "state", tmp / "run"
    cfg.mkdir()
    vnet_args = ["--config-dir", str(cfg), "--state-dir", str(state), "--run-dir", str(rundir),
                 "--policy-dir", str(tmp / "policies")]
    daemon: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    try:
        step("Namespaces: a host, an upstream behind its uplink eth1, two guests")
        setup_namespaces()
        (cfg / "demo.yaml").write_text(NETWORK.format(g1=G1, g2=G2))
        print((cfg / "demo.yaml").read_text())
        step("vnet validate / plan / apply (in the host namespace)")
        in_ns(HOST, VNET, *vnet_args, "validate")
        in_ns(HOST, VNET, *vnet_args, "plan")
        in_ns(HOST, VNET, *vnet_args, "apply")
        check("second plan is empty",
              in_ns(HOST, VNET, *vnet_args, "plan", quiet=True).stdout.strip() == "no changes")
        step("vnet daemon: DHCP, DNS, TFTP and filtering for the network")
        log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        daemon = subprocess.Popen(["ip", "netns", "exec", HOST, VNET, *vnet_args, "daemon"],
                                  stdout=log, stderr=subprocess.STDOUT)
        check("daemon is up", wait_for(rundir / "vnet.sock", 20), f"log in {tmp / 'daemon.log'}")
        step("Guests ask for DHCP leases (udhcpc)")
        script = tmp / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        for ns, name in ((G1, "web1"), (G2, "db1")):
            lease = tmp / f"{name}.lease"
            env = {**os.environ, "LEASE_FILE": str(lease)}
            proc = subprocess.run(["ip", "netns", "exec", ns, "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1",
                                   "-i", "eth0", "-x", f"hostname:{name}", "-s", str(script)],
                                  capture_output=True, text=True, env=env, timeout=30)
            got = lease.read_text().strip() if lease.exists() else proc.stderr.strip()[-200:]
            check(f"{name} got a lease", lease.exists(), got)
        in_ns(HOST, VNET, *vnet_args, "leases", check_rc=False)
        step("Names from leases and definitions (kdig @10.99.0.1)")
        for name, want in (("web1.demo.test", "10.99.0.10"), ("gateway.demo.test", "10.99.0.1")):
            out = in_ns(G2, "kdig", "+short", "+time=2", "+retry=1", "@10.99.0.1", name,
                        check_rc=False, quiet=True).stdout.strip()
            check(f"{name} resolves", want in out.split(), out or "no answer")
        step("Guest to guest, and out through NAT to the upstream namespace")
        ok = in_ns(G2, "ping", "-c", "1", "-W", "2", "10.99.0.10", check_rc=False, quiet=True).returncode == 0
        check("db1 pings web1", ok)
        ok = in_ns(G1, "ping", "-c", "1", "-W", "2", "10.200.0.2", check_rc=False, quiet=True).returncode == 0
        check("web1 reaches upstream 10.200.0.2 (masqueraded)", ok)
        step("Anti-spoofing (clean-traffic): db1 pretends to be 10.99.0.77")
        in_ns(G2, "ip", "addr", "add", "10.99.0.77/24", "dev", "eth0", quiet=True)
        spoofed = in_ns(G2, "ping", "-c", "1", "-W", "1", "-I", "10.99.0.77", "10.99.0.10",
                        check_rc=False, quiet=True).returncode == 0
        check("a forged source address is dropped", not spoofed)
        in_ns(HOST, VNET, *vnet_args, "policy", "explain", "--from", "db1", "--to", "10.99.0.10",
              check_rc=False)
        step("Topology of the host namespace")
        run("ip", "-n", HOST, "-br", "link")
        run("ip", "-n", HOST, "-br", "addr")
        step("vnet status")
        in_ns(HOST, VNET, *vnet_args, "status", check_rc=False)
        if args.wait:
            print("\nRunning. Press Ctrl-C to stop and clean up.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except KeyboardInterrupt:
        print("interrupted")
    except RuntimeError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        failures.append(str(err))
    finally:
        step("Cleaning up: daemon stopped, vnet down, namespaces deleted")
        cleanup(daemon, vnet_args)
        if failures and (tmp / "daemon.log").exists():
            print("daemon log (tail):")
            print("\n".join((tmp / "daemon.log").read_text(errors="replace").splitlines()[-30:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'demo OK' if not failures else 'demo had failures: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
