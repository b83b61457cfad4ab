"""TFTP benchmark: a 64 MiB download from vnet, tftpd-hpa and dnsmasq, same topology, same run.

    flock /tmp/vnet-bench.lock .venv/bin/python bench/tftp.py [--rounds 2] [--size-mib 64] [--write]

Builds its own namespaces (``vnftb<pid>s``: the server on 10.77.8.1; ``vnftb<pid>c``: the
client, joined by a veth pair) and deletes them afterwards, also on failure. Every server runs
pinned to CPU 0 and every client to CPU 1 (``taskset``), so each lock-step round trip crosses
CPUs the same way for all servers. Servers are started here and killed by PID.

Clients: curl at blksize 1468 and at 512 (lock-step), atftp at blksize 1468 with windowsize 16
and 64 (RFC 7440; a server that ignores windowsize falls back to lock-step). Servers alternate
over ``--rounds``; the table shows each cell's best round in MB/s (10**6 bytes/s) and vnet's
ratio to each reference. ``--write`` writes the table to bench/RESULTS-tftp.md, a section to
merge into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_IP, CLIENT_IP = "10.77.8.1", "10.77.8.2"
SERVER_CPU, CLIENT_CPU = "0", "1"
SERVERS = ("vnet", "tftpd-hpa", "dnsmasq")
CLIENTS: dict[str, list[str]] = {
    "curl blksize 1468": ["curl", "-sS", "--tftp-blksize", "1468", "tftp://{ip}/{file}",
                          "-o", "{out}"],
    "curl blksize 512": ["curl", "-sS", "tftp://{ip}/{file}", "-o", "{out}"],
    "atftp 1468 windowsize 16": ["atftp", "--option", "blksize 1468", "--option",
                                 "windowsize 16", "-g", "-r", "{file}", "-l", "{out}", "{ip}"],
    "atftp 1468 windowsize 64": ["atftp", "--option", "blksize 1468", "--option",
                                 "windowsize 64", "-g", "-r", "{file}", "-l", "{out}", "{ip}"],
}
FILE = "bench.bin"


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def topology() -> Iterator[tuple[str, str]]:
    server, client = f"vnftb{os.getpid()}s", f"vnftb{os.getpid()}c"
    try:
        for ns in (server, client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", server, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0",
           "netns", client)
        sh("ip", "-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "veth0")
        sh("ip", "-n", client, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        sh("ip", "-n", server, "link", "set", "veth0", "up")
        sh("ip", "-n", client, "link", "set", "eth0", "up")
        yield server, client
    finally:
        for ns in (client, server):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def server_command(name: str, root: Path, workdir: Path) -> list[str]:
    if name == "vnet":
        return [sys.executable, "-m", "vnet.serve.tftp", SERVER_IP, str(root)]
    if name == "tftpd-hpa":
        return ["in.tftpd", "--listen", "--foreground", "--address", f"{SERVER_IP}:69",
                "--user", "root", "--secure", str(root)]
    if name == "dnsmasq":
        return ["dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--port=0",
                "--bind-interfaces", f"--listen-address={SERVER_IP}", "--interface=veth0",
                "--enable-tftp", f"--tftp-root={root}", "--user=root",
                f"--pid-file={workdir / 'dnsmasq.pid'}", "--log-facility=-"]
    raise ValueError(name)


@contextlib.contextmanager
def running(name: str, ns: str, root: Path, workdir: Path) -> Iterator[None]:
    cmd = ["ip", "netns", "exec", ns, "taskset", "-c", SERVER_CPU,
           *server_command(name, root, workdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while ":69 " not in sh("ip", "netns", "exec", ns, "ss", "-uln").stdout:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start listening on port 69")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def download(ns: str, client: str, out: Path, size: int) -> float:
    """Seconds for one download; RuntimeError if the file did not arrive whole."""
    args = [a.format(ip=SERVER_IP, file=FILE, out=out) for a in CLIENTS[client]]
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = sh("ip", "netns", "exec", ns, "taskset", "-c", CLIENT_CPU, *args, check=False,
              timeout=300)
    elapsed = time.perf_counter() - started
    got = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    if proc.returncode or got != size:
        raise RuntimeError(f"{client}: exit {proc.returncode}, {got} of {size} bytes: "
                           f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return elapsed


def table(best: dict[tuple[str, str], float], size: int) -> str:
    def rate(server: str, client: str) -> float | None:
        seconds = best.get((server, client))
        return size / seconds / 1e6 if seconds else None

    lines = ["| client | vnet MB/s | tftpd-hpa MB/s | dnsmasq MB/s | vnet/tftpd-hpa | "
             "vnet/dnsmasq | vnet/(tftpd-hpa lock-step 1468) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lockstep = rate("tftpd-hpa", "curl blksize 1468")
    for client in CLIENTS:
        v, h, d = (rate(s, client) for s in SERVERS)
        cells = [f"{x:.1f}" if x else "failed" for x in (v, h, d)]
        ratios = [f"{v / r:.2f}x" if v and r else "-" for r in (h, d, lockstep)]
        lines.append(f"| {client} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def verdict(best: dict[tuple[str, str], float], size: int) -> list[str]:
    def rate(server: str, client: str) -> float:
        seconds = best.get((server, client))
        return size / seconds / 1e6 if seconds else 0.0

    lines = []
    for client in ("curl blksize 1468", "curl blksize 512"):
        ratio = rate("vnet", client) / max(rate("tftpd-hpa", client), 1e-9)
        lines.append(f"lock-step, {client}: vnet {ratio:.2f}x tftpd-hpa "
                     f"(floor 0.75x: {'met' if ratio >= 0.75 else 'MISSED'}; "
                     f"target 1x: {'met' if ratio >= 1 else 'missed'})")
    lockstep = max(rate("tftpd-hpa", "curl blksize 1468"), 1e-9)
    ratio = rate("vnet", "atftp 1468 windowsize 16") / lockstep
    lines.append(f"windowsize 16: vnet {ratio:.1f}x tftpd-hpa's lock-step rate at 1468 "
                 f"(floor 5x: {'met' if ratio >= 5 else 'MISSED'}; "
                 f"target 10x: {'met' if ratio >= 10 else 'missed'})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--write", action="store_true",
                        help="write bench/RESULTS-tftp.md (a section for bench/RESULTS.md)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("in.tftpd", "dnsmasq", "curl", "atftp", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    size = args.size_mib << 20
    best: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="vnf-tftp-bench-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        with (root / FILE).open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        for p in (work, root):
            p.chmod(0o755)
        (root / FILE).chmod(0o644)
        out = Path(tempfile.mkdtemp(prefix="vnf-tftp-out-", dir="/dev/shm")) / "out.bin"
        try:
            with topology() as (server_ns, client_ns):
                for rnd in range(args.rounds):
                    for server in SERVERS:
                        with running(server, server_ns, root, work):
                            for client in CLIENTS:
                                try:
                                    seconds = download(client_ns, client, out, size)
                                except RuntimeError as err:
                                    print(f"round {rnd + 1} {server:9} {client}: {err}")
                                    continue
                                key = (server, client)
                                best[key] = min(best.get(key, seconds), seconds)
                                print(f"round {rnd + 1} {server:9} {client:26} "
                                      f"{size / seconds / 1e6:8.1f} MB/s", flush=True)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
    text = table(best, size)
    checks = verdict(best, size)
    print()
    print(text)
    print()
    print("\n".join(checks))
    if args.write:
        cpu = next((ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?")
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = (
            "# TFTP benchmark results\n\n"
            f"- date: {when}\n"
            f"- machine: {platform.node()}, {os.cpu_count()} vCPU {cpu}, "
            f"kernel {platform.release()}, Python {platform.python_version()}\n"
            f"- command: `flock /tmp/vnet-bench.lock .venv/bin/python bench/tftp.py "
            f"--rounds {args.rounds} --size-mib {args.size_mib} --write`\n"
            f"- {args.size_mib} MiB file; server pinned to CPU {SERVER_CPU}, client to CPU "
            f"{CLIENT_CPU}; best of {args.rounds} rounds; MB/s = 10**6 bytes/s\n\n"
            f"{text}\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
        )
        (REPO / "bench" / "RESULTS-tftp.md").write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
