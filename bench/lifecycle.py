#!/usr/bin/env python3
"""Guest lifecycle benchmark: attach/detach through the daemon's API, restart adoption, hook round
trip; vnet against the per-guest shell steps a hook script would run (`ip` + `nft`), in one run.

Everything runs inside a network namespace it creates (the "host"), with a real `vnet daemon`
started there (nat network, clean-traffic on every guest, TAP ports), and is removed afterwards,
also on failure. What is timed is what users run:

- attach / detach: `POST /v1/networks/bench/guests` and `DELETE .../guests/NAME` on the unix
  socket (the HTTP client the CLI uses), with N guests already present; p50 / p99, and the
  share of the daemon's time spent in nft (its own histograms, from /metrics);
- reference: the same port made by separate commands, as a shell hook does: `ip tuntap add`,
  `ip link set master/up` (on a bridge of its own: a Linux bridge holds at most 1,024 ports),
  then `nft add element` for the port's entries in vnet's sets (one process each);
- restart: SIGTERM, start again, time until the API answers, and the number of changes made;
- hook: `vnet hook libvirt GUEST prepare begin -` with a domain XML on stdin, wall time per call
  (interpreter start included), then `release end`.

    sudo .venv/bin/python bench/lifecycle.py [--guests 1000] [--samples 50] [--hooks 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vnet.httpclient import call_json, request  # noqa: E402

VNET = str(Path(sys.executable).parent / "vnet")
NETWORK = """\
name: bench
mode: nat
bridge: {name: vn-bench}
ipv4:
  address: 10.80.0.1/16
  dhcp: {ranges: [10.80.1.0-10.80.200.255]}
policies: [clean-traffic]
"""
XML = """<domain type='qemu'><name>{name}</name><uuid>6f1c2a3b-4d5e-4f60-8a7b-{n:012x}</uuid>
<metadata><vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
<vnet:port mac="{mac}" network="bench"/></vnet:ports></metadata>
<devices><interface type='ethernet'><mac address='{mac}'/><target dev='{dev}' managed='no'/>
<model type='virtio'/></interface></devices></domain>"""


def mac(i: int, tag: int = 1) -> str:
    return f"52:54:{tag:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Daemon:
    def __init__(self, ns: str, tmp: Path) -> None:
        self.ns, self.tmp = ns, tmp
        self.sock = tmp / "run" / "vnet.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    def args(self) -> list[str]:
        t = self.tmp
        return ["--config-dir", str(t / "networks"), "--state-dir", str(t / "state"),
                "--run-dir", str(t / "run"), "--policy-dir", str(t / "nopolicies")]

    def start(self) -> float:
        began = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, VNET, *self.args(),
                                          "daemon"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()[-3000:]}")
            try:
                call_json(self.sock, "GET", "/v1/status", timeout=1)
                return time.perf_counter() - began
            except Exception:
                time.sleep(0.01)
        raise SystemExit("daemon did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def attach(sock: Path, i: int) -> float:
    body = {"guest": f"g{i}", "mac": mac(i), "ifname": f"vb{i}"}
    t = time.perf_counter()
    status, reply = request(sock, "POST", "/v1/networks/bench/guests", body, timeout=60)
    elapsed = time.perf_counter() - t
    if status >= 300:
        raise SystemExit(f"attach g{i}: {status} {reply}")
    return elapsed


def detach(sock: Path, i: int) -> float:
    t = time.perf_counter()
    status, reply = request(sock, "DELETE", f"/v1/networks/bench/guests/g{i}", timeout=60)
    elapsed = time.perf_counter() - t
    if status >= 300 or not reply.get("removed"):
        raise SystemExit(f"detach g{i}: {status} {reply}")
    return elapsed


def step(ns: str, cmd: list[str]) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def reference_attach(ns: str, i: int) -> float:
    """The per-guest steps of a shell hook: one process per step."""
    ifname, m = f"rf{i}", mac(i, 2)
    steps = [
        ["ip", "tuntap", "add", ifname, "mode", "tap"],
        ["ip", "link", "set", ifname, "master", "vn-ref", "up"],
        ["nft", "add", "element", "bridge", "vnet", "ports", f"{{ {ifname} }}"],
        ["nft", "add", "element", "bridge", "vnet", "port_macs", f"{{ {ifname} . {m} }}"],
        ["nft", "add", "element", "bridge", "vnet", "mac", f"{{ {ifname} . {m} }}"],
        ["nft", "add", "element", "bridge", "vnet", "port_mark", f"{{ {ifname} : 0x7004{i:04x} }}"],
    ]
    t = time.perf_counter()
    for cmd in steps:
        step(ns, cmd)
    return time.perf_counter() - t


def reference_detach(ns: str, i: int) -> float:
    ifname, m = f"rf{i}", mac(i, 2)
    steps = [
        ["nft", "delete", "element", "bridge", "vnet", "port_mark", f"{{ {ifname} }}"],
        ["nft", "delete", "element", "bridge", "vnet", "mac", f"{{ {ifname} . {m} }}"],
        ["nft", "delete", "element", "bridge", "vnet", "port_macs", f"{{ {ifname} . {m} }}"],
        ["nft", "delete", "element", "bridge", "vnet", "ports", f"{{ {ifname} }}"],
        ["ip", "link", "del", ifname],
    ]
    t = time.perf_counter()
    for cmd in steps:
        step(ns, cmd)
    return time.perf_counter() - t


def hook(ns: str, tmp: Path, op: str, sub: str, extra: str, i: int) -> float:
    xml = XML.format(name=f"h{i}", n=i, mac=mac(i, 3), dev=f"vh{i}")
    env = {**os.environ, "VNET_RUN_DIR": str(tmp / "run"), "VNET_HOOK_TIMEOUT": "10"}
    t = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", ns, VNET, "hook", "libvirt", f"h{i}", op, sub,
                           extra], input=xml.encode(), capture_output=True, env=env)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"hook {op} h{i}: {proc.stderr.decode()}")
    return elapsed


def ip_netns_exec_cost(ns: str, rounds: int = 20) -> float:
    t = time.perf_counter()
    for _ in range(rounds):
        subprocess.run(["ip", "netns", "exec", ns, "true"], check=True)
    return (time.perf_counter() - t) / rounds


def run(ns: str, tmp: Path, guests: int, samples: int, hooks: int) -> None:
    (tmp / "networks").mkdir()
    (tmp / "networks" / "bench.yaml").write_text(NETWORK)
    d = Daemon(ns, tmp)
    d.start()
    rows: list[tuple[str, str]] = []
    table: dict[int, dict[str, list[float]]] = {}
    present = 0
    for level in sorted({min(100, guests), guests}):
        while present < level - samples:
            attach(d.sock, present)
            present += 1
        before_text = request(d.sock, "GET", "/metrics")[1]
        at = table.setdefault(level, {"attach": [], "detach": []})
        first = present
        for i in range(first, first + samples):
            at["attach"].append(attach(d.sock, i))
        for i in range(first, first + samples):
            at["detach"].append(detach(d.sock, i))
        for i in range(first, first + samples):
            attach(d.sock, i)
        present = first + samples
        after_text = request(d.sock, "GET", "/metrics")[1]
        nft = metric(after_text, "vnet_nft_apply_seconds_sum") - metric(before_text,
                                                                       "vnet_nft_apply_seconds_sum")
        rec = metric(after_text, "vnet_reconcile_seconds_sum") - metric(
            before_text, "vnet_reconcile_seconds_sum")
        at["nft_share"] = [nft / rec if rec else 0.0]
    # its own bridge: a Linux bridge holds at most 1,024 ports, vn-bench has the guests
    step(ns, ["ip", "link", "add", "vn-ref", "type", "bridge"])
    ref_attach = [reference_attach(ns, i) for i in range(samples)]
    ref_detach = [reference_detach(ns, i) for i in range(samples)]
    exec_cost = ip_netns_exec_cost(ns)
    # restart with every guest present
    d.stop()
    mark = len(d.log.read_text())
    restart = d.start()
    changes = d.log.read_text()[mark:].count(" apply: ")
    for i in range(hooks):  # room on the bridge (a Linux bridge holds at most 1,024 ports)
        detach(d.sock, i)
    hook_prep = [hook(ns, tmp, "prepare", "begin", "-", i) for i in range(hooks)]
    hook_rel = [hook(ns, tmp, "release", "end", "-", i) for i in range(hooks)]
    d.stop()

    print(f"# guest lifecycle benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC, "
          f"{platform.machine()} {os.cpu_count()} CPUs, kernel {platform.release()}")
    print(f"# daemon in netns {ns}: nat network, clean-traffic, TAP ports; {samples} samples per row")
    print(f"{'operation':44} {'p50 ms':>8} {'p99 ms':>8}  notes")
    for level, at in table.items():
        for what in ("attach", "detach"):
            v = at[what]
            rows.append((f"API {what}, {level} guests present",
                         f"{pct(v, 0.5) * 1e3:8.1f} {pct(v, 0.99) * 1e3:8.1f}  "
                         f"nft {at['nft_share'][0]:.0%} of the daemon's reconcile time"))
    rows.append((f"reference attach ({len(ref_attach)} x ip/nft commands)",
                 f"{pct(ref_attach, 0.5) * 1e3:8.1f} {pct(ref_attach, 0.99) * 1e3:8.1f}  "
                 f"6 processes; `ip netns exec` alone costs {exec_cost * 1e3:.1f} ms each"))
    rows.append(("reference detach (5 x ip/nft commands)",
                 f"{pct(ref_detach, 0.5) * 1e3:8.1f} {pct(ref_detach, 0.99) * 1e3:8.1f}"))
    rows.append(("hook libvirt prepare begin (wall)",
                 f"{pct(hook_prep, 0.5) * 1e3:8.1f} {pct(hook_prep, 0.99) * 1e3:8.1f}  "
                 "incl. interpreter start and `ip netns exec`"))
    rows.append(("hook libvirt release end (wall)",
                 f"{pct(hook_rel, 0.5) * 1e3:8.1f} {pct(hook_rel, 0.99) * 1e3:8.1f}"))
    for name, value in rows:
        print(f"{name:44} {value}")
    print(f"daemon restart adopting {present} ports: {restart:.2f} s until the API answers, "
          f"{changes} changes made")
    print(f"median attach at {max(table)} vs reference: "
          f"{statistics.median(ref_attach) / statistics.median(table[max(table)]['attach']):.1f}x "
          "faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--guests", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--hooks", type=int, default=50)
    args = ap.parse_args()
    if shutil.which("nft") is None:
        raise SystemExit("needs nft (apt-get install nftables)")
    ns = f"vnlife{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="vnet-lifecycle-"))
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        run(ns, tmp, args.guests, args.samples, args.hooks)
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
