#!/usr/bin/env python3
"""L2 benchmark: 1,000 TAP guests on one bridge, vnet vs `ip -batch`, in one run.

Runs entirely inside a network namespace it creates (and deletes, also on failure).
Prints a table: vnet apply / no-change plan / down, against `ip -batch` creating and
attaching the same TAPs, `ip -j link` dumping them and `ip link del group` removing them.

    sudo .venv/bin/python bench/l2.py [--guests 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def definition(n: int) -> str:
    lines = ["name: bench", "mode: isolated", "bridge: {name: vn-bench}", "guests:"]
    lines += [f'  - {{name: g{i}, mac: "52:54:01:{i >> 8 & 255:02x}:{i & 255:02x}:01"}}' for i in range(n)]
    return "\n".join(lines) + "\n"


def inner(n: int, rounds: int) -> None:
    """Runs inside the namespace: times vnet in-process and the ip reference."""
    sys.path.insert(0, str(REPO))
    from vnet.config import load_model
    from vnet.model import Model
    from vnet.reconcile import apply_model, down, plan_model

    results: dict[str, list[float]] = {k: [] for k in (
        "vnet apply", "vnet plan (no changes)", "vnet down", "vnet CLI plan (wall)",
        "vnet apply incl. nftables",
        "ip -batch create+attach", "ip -j link dump", "ip link del group")}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp, "networks")
        cfg.mkdir()
        (cfg / "bench.yaml").write_text(definition(n))
        model = load_model(cfg)
        batch = Path(tmp, "batch")
        batch.write_text("link add br0 type bridge\n"
                         + "".join(f"tuntap add t{i} mode tap\n" for i in range(n))
                         + "".join(f"link set t{i} master br0 group 77 up\n" for i in range(n)))
        vnet_bin = str(Path(sys.executable).parent / "vnet")
        for _ in range(rounds):
            t = time.perf_counter()
            done = apply_model(model, filters=False)
            results["vnet apply"].append(time.perf_counter() - t)
            assert len(done) == n + 1, done[:3]
            t = time.perf_counter()
            planned = plan_model(model, filters=False)
            results["vnet plan (no changes)"].append(time.perf_counter() - t)
            assert planned.actions == [], planned.actions[:3]
            t = time.perf_counter()
            done = apply_model(model, state_dir=Path(tmp))  # the isolated mode's nftables tables for 1,000 ports
            results["vnet apply incl. nftables"].append(time.perf_counter() - t)
            assert len(done) == 1, done
            t = time.perf_counter()
            out = subprocess.run([vnet_bin, "--config-dir", str(cfg), "--state-dir", tmp, "plan"],
                                 capture_output=True, text=True)
            results["vnet CLI plan (wall)"].append(time.perf_counter() - t)
            assert out.stdout.strip() == "no changes", out.stdout + out.stderr
            t = time.perf_counter()
            down(["bench"], Model(), state_dir=Path(tmp))
            results["vnet down"].append(time.perf_counter() - t)

            t = time.perf_counter()
            subprocess.run(["ip", "-batch", str(batch)], check=True)
            results["ip -batch create+attach"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["ip", "-j", "link"], check=True, capture_output=True)
            results["ip -j link dump"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["ip", "link", "del", "group", "77"], check=True)
            subprocess.run(["ip", "link", "del", "br0"], check=True)
            results["ip link del group"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"# L2 benchmark: {n} TAP guests on one bridge, median of {rounds} rounds")
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.machine()} "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}")
    print(f"{'operation':32} {'seconds':>9}  reference / target")
    rows = [
        ("vnet apply", "ip -batch create+attach", "target <= 2x ip -batch"),
        ("vnet apply incl. nftables", None, "L2 already there: compile + load the tables"),
        ("vnet plan (no changes)", "ip -j link dump", "target < 0.3 s"),
        ("vnet CLI plan (wall)", None, "incl. interpreter start"),
        ("vnet down", "ip link del group", "target < 1 s"),
    ]
    for name, ref, note in rows:
        ratio = f"  {med[name] / med[ref]:.2f}x {ref} ({med[ref]:.3f} s)" if ref else ""
        print(f"{name:32} {med[name]:9.3f}{ratio}  [{note}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--guests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.guests, args.rounds)
        return
    ns = f"vnbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                        "--guests", str(args.guests), "--rounds", str(args.rounds)], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
