"""DHCP benchmark: perfdhcp against vnet, Kea (memfile, persist) and dnsmasq, one after another.

Topology (created here, deleted in ``finally``): a server namespace with a bridge ``vn-b``
(10.0.0.1/8) and a veth port; a client namespace holding the veth's other end (10.0.0.2/8)
where perfdhcp runs as a relay (giaddr 10.0.0.2), so every server sees the same unicast
relayed traffic. Every server is pinned to one CPU and perfdhcp to the other (``taskset``).

For each server a ladder of rates runs, NEW clients at every step (a fresh MAC base per step);
a step passes when at most 1% of the DISCOVERs end without an ACK and perfdhcp reached 95% of
the asked rate. Printed per server: the highest passing rate (4-way exchanges/s as perfdhcp
measured them) and the median DISCOVER-OFFER and REQUEST-ACK latency at that step.

``--crash``: under perfdhcp load, kill -9 the vnet daemon, restart it, then check that no
address is held by two bound leases and that every ACK perfdhcp printed (``-x l``) is in the
lease database. ``--profile``: py-spy samples the vnet daemon during one load step.

Run as root, holding the bench lock:
    flock /tmp/vnet-bench.lock .venv/bin/python bench/dhcp.py [--crash] [--profile]
Kea and dnsmasq configs live in a temp dir; their processes are killed by PID afterwards.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VNET = str(Path(sys.executable).parent / "vnet")
PYSPY = str(Path(sys.executable).parent / "py-spy")
PREFIX = "vndb"
POOL = ("10.1.0.0", "10.15.255.254")

VNET_CONFIG = f"""\
name: bench
mode: isolated
bridge: {{name: vn-b}}
ipv4:
  address: 10.0.0.1/8
  dhcp:
    ranges: [{POOL[0]}-{POOL[1]}]
    lease-time: 1h
dns: {{enabled: false}}    # DHCP against DHCP: Kea and dnsmasq (--port=0) serve no names here
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


@dataclass
class Step:
    rate: int
    achieved: float
    discovers: int
    acks: int
    median_offer_ms: float
    median_ack_ms: float
    leases: list[tuple[str, str]]

    @property
    def drops(self) -> float:
        return 1.0 - self.acks / self.discovers if self.discovers else 1.0

    def passed(self) -> bool:
        return self.drops <= 0.01 and self.achieved >= 0.95 * self.rate


class Lab:
    """Two namespaces over a veth; the server side has the bridge."""

    def __init__(self, tmp: Path, cpu_server: int, cpu_client: int) -> None:
        self.tmp = tmp
        self.server_ns = f"{PREFIX}s{os.getpid()}"
        self.client_ns = f"{PREFIX}c{os.getpid()}"
        self.cpu_server = cpu_server
        self.cpu_client = cpu_client
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mac_step = 0

    def setup(self) -> None:
        s, c = self.server_ns, self.client_ns
        for ns in (s, c):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", s, "link", "add", "vn-b", "type", "bridge")
        sh("ip", "-n", s, "addr", "add", "10.0.0.1/8", "dev", "vn-b")
        sh("ip", "-n", s, "link", "set", "vn-b", "up")
        sh("ip", "-n", s, "link", "add", "vb0", "type", "veth", "peer", "name", "eth0",
           "netns", c)
        sh("ip", "-n", s, "link", "set", "vb0", "master", "vn-b", "up")
        sh("ip", "-n", c, "addr", "add", "10.0.0.2/8", "dev", "eth0")
        sh("ip", "-n", c, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        for proc in self.procs:
            kill(proc)
        for ns in (self.server_ns, self.client_ns):
            out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in out:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.server_ns, "taskset", "-c", str(self.cpu_server),
                 *cmd],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            out = sh("ip", "netns", "exec", self.server_ns, "ss", "-Hulnp", "sport", "= :67").stdout
            if f"pid={proc.pid}," in out:
                time.sleep(0.3)
                return
            time.sleep(0.1)
        raise RuntimeError(f"server did not listen on :67\n{log.read_text()[-2000:]}")

    def perfdhcp(self, rate: int, seconds: float, leases: bool = False) -> Step:
        """One step of NEW clients at ``rate`` exchanges/s."""
        self.mac_step += 1
        base = f"mac=02:{self.mac_step:02x}:00:00:00:00"
        cmd = ["ip", "netns", "exec", self.client_ns, "taskset", "-c", str(self.cpu_client),
               "perfdhcp", "-4", "-l", "eth0", "-r", str(rate), "-R", "16000000", "-b", base,
               "-p", str(int(seconds)), "-W", "1000000", "-x", "tl" if leases else "t",
               "10.0.0.1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if proc.returncode not in (0, 3):  # 3: some exchanges were dropped
            raise RuntimeError(f"perfdhcp failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return parse_perfdhcp(proc.stdout, rate, seconds)


def parse_perfdhcp(text: str, rate: int, seconds: float) -> Step:
    """perfdhcp's report -> Step. The achieved rate is ACKs per second of the sending period
    (perfdhcp's own "Rate:" also counts the exit wait)."""
    sections = re.split(r"\*\*\*Statistics for: ", text)
    counts: dict[str, tuple[int, int]] = {}
    for sec in sections[1:]:
        name = sec.split("*", 1)[0]
        sent = int(re.search(r"sent packets: (\d+)", sec).group(1))  # type: ignore[union-attr]
        recv = int(re.search(r"received packets: (\d+)", sec).group(1))  # type: ignore[union-attr]
        counts[name] = (sent, recv)
    delays: dict[str, list[float]] = collections.defaultdict(list)
    current = ""
    leases: list[tuple[str, str]] = []
    in_leases = False
    for line in text.splitlines():
        if line.startswith("***Timestamps for packets: "):
            current = line.split(": ", 1)[1].strip("*")
            in_leases = False
        elif line.startswith("***Leases for REQUEST-ACK"):
            in_leases = True
            current = ""
        elif line.startswith("***"):
            in_leases = False
            current = ""
        elif current and line.startswith("sent / received:"):
            sent_s, recv_s = line.split(":", 1)[1].split("/")
            delays[current].append((float(recv_s) - float(sent_s)) * 1000)
        elif in_leases and "," in line and not line.startswith("client_id"):
            cid, addr = line.split(",")[:2]
            leases.append((cid, addr))
    discovers = counts.get("DISCOVER-OFFER", (0, 0))[0]
    acks = counts.get("REQUEST-ACK", (0, 0))[1]
    return Step(
        rate, acks / seconds, discovers, acks,
        statistics.median(delays["DISCOVER-OFFER"]) if delays["DISCOVER-OFFER"] else 0.0,
        statistics.median(delays["REQUEST-ACK"]) if delays["REQUEST-ACK"] else 0.0,
        leases,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


# ----- the servers -----


@contextlib.contextmanager
def vnet(lab: Lab, state: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    root = lab.tmp / "vnet"
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "bench.yaml").write_text(VNET_CONFIG)
    state = state or root / "state"
    log = root / "daemon.log"
    proc = lab.start(
        [VNET, "daemon", "--no-apply", "--config-dir", str(root / "config"),
         "--state-dir", str(state), "--run-dir", str(root / "run"),
         "--policy-dir", str(root / "none")],
        log,
    )
    try:
        lab.wait_listening(proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill(proc)


@contextlib.contextmanager
def kea(lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    root = lab.tmp / "kea"
    root.mkdir(exist_ok=True)
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["vn-b"], "dhcp-socket-type": "udp"},
            "lease-database": {"type": "memfile", "persist": True,
                               "name": str(root / "leases4.csv"), "lfc-interval": 0},
            "valid-lifetime": 3600,
            "subnet4": [{"id": 1, "subnet": "10.0.0.0/8",
                         "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}]}],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                         "output_options": [{"output": str(root / "kea.log")}]}],
        }
    }
    path = root / "kea-dhcp4.conf"
    path.write_text(json.dumps(config, indent=2))
    log = root / "stdout.log"
    env = {"KEA_PIDFILE_DIR": str(root), "KEA_LOCKFILE_DIR": str(root)}
    proc = lab.start(["kea-dhcp4", "-c", str(path)], log, env)
    try:
        lab.wait_listening(proc, log)
        yield proc
    finally:
        kill(proc)


@contextlib.contextmanager
def dnsmasq(lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    root = lab.tmp / "dnsmasq"
    root.mkdir(exist_ok=True)
    log = root / "stdout.log"
    proc = lab.start(
        ["dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--bind-interfaces",
         "--interface=vn-b", "--except-interface=lo", "--port=0", "--user=root",
         f"--dhcp-range={POOL[0]},{POOL[1]},255.0.0.0,1h", "--dhcp-lease-max=16000000",
         f"--dhcp-leasefile={root / 'leases'}", f"--pid-file={root / 'pid'}", "--no-ping",
         "--dhcp-authoritative", f"--log-facility={root / 'dnsmasq.log'}"],
        log,
    )
    try:
        lab.wait_listening(proc, log)
        yield proc
    finally:
        kill(proc)


SERVERS = {"vnet": vnet, "kea": kea, "dnsmasq": dnsmasq}
LADDERS = {
    "vnet": [4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000, 22000, 24000],
    "kea": [4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000, 22000, 24000],
    "dnsmasq": [100, 200, 300, 400, 500, 700],
}


def _step_line(name: str, step: Step) -> str:
    return (
        f"{name:10} rate {step.rate:6} achieved {step.achieved:9.1f} drops {step.drops:7.2%} "
        f"median offer {step.median_offer_ms:7.2f} ms ack {step.median_ack_ms:7.2f} ms"
        f" {'ok' if step.passed() else 'FAIL'}"
    )


def ladder(lab: Lab, name: str, seconds: float, log: list[str], rates: list[int] | None = None
           ) -> Step | None:
    best: Step | None = None
    failures = 0
    with SERVERS[name](lab):
        for rate in rates or LADDERS[name]:
            step = lab.perfdhcp(rate, seconds)
            log.append(_step_line(name, step))
            print(log[-1], flush=True)
            if step.passed():
                best = step if best is None or step.achieved > best.achieved else best
                failures = 0
            else:
                failures += 1
                if failures >= 2:
                    break
    return best


def crash_test(lab: Lab, rate: int, seconds: int) -> list[str]:
    """kill -9 under load, restart, verify the database against perfdhcp's ACKs."""
    state = lab.tmp / "crash-state"
    out: list[str] = []
    with vnet(lab, state) as proc:
        runner = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, "taskset", "-c", str(lab.cpu_client),
             "perfdhcp", "-4", "-l", "eth0", "-r", str(rate), "-R", "16000000",
             "-b", "mac=02:ee:00:00:00:00", "-p", str(int(seconds)), "-W", "1000000", "-x", "l",
             "10.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(seconds / 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = time.time()
    with vnet(lab, state):
        restarted = time.time() - killed_at
        text, _ = runner.communicate(timeout=seconds + 60)
        step = parse_perfdhcp(text, rate, seconds)
    conn = sqlite3.connect(str(state / "leases.db"))
    rows = conn.execute("SELECT ip, client, state FROM leases WHERE network='bench'").fetchall()
    conn.close()
    bound = {ip: client.hex() for ip, client, st in rows if st == "bound"}
    holders = collections.Counter(client.hex() for _, client, st in rows if st == "bound")
    missing = [(cid, ip) for cid, ip in step.leases if bound.get(ip) != cid]
    out.append(f"crash test: perfdhcp {rate}/s for {seconds}s, vnet killed -9 at {seconds / 2}s, "
               f"restarted in {restarted:.2f}s")
    out.append(f"  ACKs perfdhcp saw: {len(step.leases)}; bound rows in DB: {len(bound)}; "
               f"ACKed leases missing from DB: {len(missing)}")
    dup = sum(1 for n in holders.values() if n > 1)
    out.append(f"  addresses held twice: 0 by construction (primary key network+ip); "
               f"clients holding two addresses: {dup}")
    acked_ips = [ip for _, ip in step.leases]
    out.append(f"  addresses ACKed twice to different clients: "
               f"{len(acked_ips) - len(set(acked_ips))}")
    ok = step.leases and not missing and len(acked_ips) == len(set(acked_ips)) and not dup
    out.append("  RESULT: " + ("PASS" if ok else "FAIL"))
    return out


def profile(lab: Lab, rate: int, seconds: float) -> list[str]:
    """py-spy samples of the vnet daemon under load: share of samples per function (self)."""
    if not Path(PYSPY).exists():
        return ["profile: py-spy not installed (pip install py-spy)"]
    raw = lab.tmp / "profile.txt"
    with vnet(lab) as proc:
        spy = subprocess.Popen(
            [PYSPY, "record", "--pid", str(proc.pid), "--format", "raw", "--output", str(raw),
             "--duration", str(int(seconds)), "--rate", "250", "--threads",
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        step = lab.perfdhcp(rate, seconds)
        spy.wait(timeout=seconds + 60)
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        threads[thread] += int(count)
        own[f"{thread}: {frames[-1]}"] += int(count)
        total += int(count)
    out = [f"profile: py-spy of the vnet daemon at {rate}/s asked ({step.achieved:.0f}/s "
           f"achieved), {total} busy samples at 250 Hz over {seconds:g} s"]
    out.append("  busy share by thread: " + ", ".join(
        f"{name} {n / total:.0%}" for name, n in threads.most_common(5)) if total else "")
    out.append("  self time (leaf function):")
    for leaf, n in own.most_common(15):
        out.append(f"  {n / total:6.1%}  {leaf}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="vnet,kea,dnsmasq")
    parser.add_argument("--seconds", type=int, default=5, help="length of one rate step")
    parser.add_argument("--cpu-server", type=int, default=1)
    parser.add_argument("--cpu-client", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="ladders per server")
    parser.add_argument("--rates", help="comma-separated rates for every server (smoke test)")
    parser.add_argument("--crash", action="store_true", help="run the kill -9 crash test")
    parser.add_argument("--crash-rate", type=int, default=8000)
    parser.add_argument("--profile", action="store_true", help="py-spy the vnet daemon")
    parser.add_argument("--profile-rate", type=int, default=16000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/dhcp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("perfdhcp", "kea-dhcp4", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="vnd-bench-"))
    lab = Lab(tmp, args.cpu_server, args.cpu_client)
    lines: list[str] = []
    best: dict[str, Step | None] = {}
    try:
        lab.setup()
        rates = [int(r) for r in args.rates.split(",")] if args.rates else None
        names = args.servers.split(",")
        paired = [n for n in names if n != "dnsmasq"]
        for round_ in range(args.rounds):
            # vnet and Kea run step by step in turn (each started afresh on its own growing
            # lease state), so a busy moment of this shared machine hits both alike.
            failures = dict.fromkeys(paired, 0)
            for rate in rates or LADDERS["vnet"]:
                active = [n for n in paired if failures[n] < 2]
                if not active:
                    break
                for name in active:
                    with SERVERS[name](lab):
                        step = lab.perfdhcp(rate, args.seconds)
                    lines.append(_step_line(f"{name} r{round_ + 1}", step))
                    print(lines[-1], flush=True)
                    if step.passed():
                        failures[name] = 0
                        old = best.get(name)
                        if old is None or step.achieved > old.achieved:
                            best[name] = step
                    else:
                        failures[name] += 1
                        best.setdefault(name, None)
        if "dnsmasq" in names:
            best["dnsmasq"] = ladder(lab, "dnsmasq", args.seconds, lines, rates)
        summary = [
            "",
            f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}",
            f"server on CPU {args.cpu_server}, perfdhcp on CPU {args.cpu_client}, "
            f"{args.seconds:g} s per step, vnet and Kea alternating step by step, "
            f"{args.rounds} rounds (best counts), new clients, perfdhcp as relay",
            "",
            "| server | highest rate with <= 1% drops | median OFFER | median ACK |",
            "| --- | --- | --- | --- |",
        ]
        for name, step in best.items():
            if step is None:
                summary.append(f"| {name} | none passed | | |")
            else:
                summary.append(f"| {name} | {step.achieved:,.0f}/s | {step.median_offer_ms:.2f} ms"
                               f" | {step.median_ack_ms:.2f} ms |")
        ref = best.get("vnet")
        for other in ("kea", "dnsmasq"):
            step = best.get(other)
            if ref and step:
                summary.append(f"vnet / {other}: {ref.achieved / step.achieved:.2f}x")
        lines += summary
        print("\n".join(summary), flush=True)
        if args.crash:
            crash = crash_test(lab, args.crash_rate, 6)
            print("\n".join(crash), flush=True)
            lines += crash
        if args.profile:
            prof = profile(lab, args.profile_rate, args.seconds)
            print("\n".join(prof), flush=True)
            lines += prof
    finally:
        lab.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
