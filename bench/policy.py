"""Benchmark: vnet's compiled policies vs the per-rule style, in a network namespace it creates.

    flock /tmp/vnet-bench.lock .venv/bin/python bench/policy.py [--guests 10000] [--ref-guests 100]

Measures, for N guests x (clean-traffic + a 5-rule policy):
- compile: model + library -> JSON document (pure Python);
- full apply: ``vnet.host.nft.replace`` (kernel check of tables/chains/rules, then one atomic
  transaction with everything);
- add / remove one guest: element changes only (``port_commands``), median of many, at N=100 and
  at N=guests;
- lease binding update: a guest's address moves (``binding_commands``), median;
- references in the same run: each rule issued as its own ``nft`` process with a linear chain
  per guest (nwfilter style, ``--ref-guests`` guests), and the same linear per-guest chains
  loaded as one ``nft -f`` transaction (``--batch-guests`` guests).

Nothing touches the root namespace: the script re-executes itself inside ``vnpbench<pid>`` and
deletes that namespace afterwards, also on failure. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIVE_RULES = """\
name: bench-five
description: five extra rules per guest, as in the issue's benchmark
inbound:
  default: drop
  rules:
    - {state: [established, related], action: accept}
    - {proto: tcp, dport: [80, 443], action: accept}
    - {proto: tcp, dport: 22, saddr: 10.0.0.0/8, action: accept}
    - {proto: icmp, type: echo-request, action: accept, limit: 10/second}
outbound:
  default: accept
  rules:
    - {proto: tcp, dport: 25, action: reject}
"""

# The same protection written as nft rule text per guest (the per-rule reference).
REF_RULES = [
    "ether saddr != {mac} drop",
    "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
    "udp sport 67 drop",
    "udp sport 547 udp dport 546 drop",
    "meta nfproto ipv4 ip saddr != {ip} drop",
    "meta nfproto ipv6 ip6 saddr != {{ ::, fe80::/10 }} drop",
    "icmpv6 type {{ nd-router-advert, nd-redirect }} drop",
    "tcp dport 25 reject",
]
REF_IN_RULES = [
    "ct state {{ established, related }} accept",
    "tcp dport {{ 80, 443 }} accept",
    "ip saddr 10.0.0.0/8 tcp dport 22 accept",
    "icmp type echo-request limit rate 10/second accept",
    "drop",
]


def guest_mac(i: int) -> str:
    return f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def guest_ip(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.64.0.10")) + i)


def make_model(n: int):  # type: ignore[no-untyped-def]
    from vnet.model import BridgeSpec, Guest, Ipv4Spec, Mode, Model, Network

    guests = tuple(
        Guest(f"g{i}", guest_mac(i), f"g{i:05d}", policies=("bench-five",), ip=guest_ip(i))
        for i in range(n)
    )
    net = Network(
        name="bench",
        mode=Mode.NAT,
        bridge=BridgeSpec("vn-bench"),
        ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.64.0.1/16")),
        policies=("clean-traffic",),
        guests=guests,
    )
    return Model((net,))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_vnet(n: int, policy_dir: Path, repeats: int) -> dict[str, float]:
    from vnet.host import nft
    from vnet.model import Guest, Network
    from vnet.policy import compile_state, load_library
    from vnet.policy.compile import binding_commands, new_port, port_commands

    library = load_library(policy_dir)
    model = make_model(n)
    t0 = time.perf_counter()
    compiled = compile_state(model, library)
    doc = compiled.document()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    nft.check(doc)
    t_check = time.perf_counter() - t0
    nft.delete_tables()
    t0 = time.perf_counter()
    nft.replace(doc)
    t_replace = time.perf_counter() - t0
    t0 = time.perf_counter()
    nft.replace(doc)  # over an existing ruleset of the same size
    t_replace2 = time.perf_counter() - t0

    net: Network = model.networks[0]
    adds: list[float] = []
    removes: list[float] = []
    for k in range(repeats):
        i = n + k
        extra = Guest(f"x{i}", guest_mac(i), f"x{i:05d}", policies=("bench-five",),
                      ip=guest_ip(i))
        bigger = Network(**{**net.__dict__, "guests": (*net.guests, extra)})
        t0 = time.perf_counter()
        port = new_port(compiled, bigger, extra)
        assert port is not None
        nft.update_elements(port_commands(port, add=True))
        compiled.track(port)
        adds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nft.update_elements(port_commands(port, add=False))
        compiled.track(port, present=False)
        removes.append(time.perf_counter() - t0)
    moves: list[float] = []
    port0 = compiled.ports[net.guests[0].ifname]
    current = port0.ips[0]
    for k in range(repeats):
        new = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.64.200.0")) + k)
        t0 = time.perf_counter()
        nft.update_elements(binding_commands(port0, [current], [new]))
        moves.append(time.perf_counter() - t0)
        current = new
    nft.delete_tables()
    return {
        "compile": t_compile,
        "check": t_check,
        "replace": t_replace,
        "replace_again": t_replace2,
        "add": statistics.median(adds),
        "remove": statistics.median(removes),
        "move": statistics.median(moves),
        "add_p90": sorted(adds)[int(len(adds) * 0.9)],
        "doc_bytes": float(len(json.dumps(doc))),
    }


def ref_rule_lines(n: int) -> list[str]:
    """nwfilter-style: a linear pair of chains per guest, jumped to from linear base chains."""
    lines = [
        "add table inet vnpref",
        "add chain inet vnpref pre { type filter hook prerouting priority 0; }",
        "add chain inet vnpref fw { type filter hook forward priority 0; }",
    ]
    for i in range(n):
        name = f"g{i:05d}"
        mac, ip = guest_mac(i), guest_ip(i)
        lines.append(f"add chain inet vnpref o_{name}")
        lines.append(f"add chain inet vnpref i_{name}")
        lines.append(f'add rule inet vnpref pre iifname "{name}" jump o_{name}')
        lines.append(f'add rule inet vnpref fw oifname "{name}" jump i_{name}')
        for rule in REF_RULES:
            lines.append(f"add rule inet vnpref o_{name} " + rule.format(mac=mac, ip=ip))
        for rule in REF_IN_RULES:
            lines.append(f"add rule inet vnpref i_{name} " + rule.format(mac=mac, ip=ip))
    return lines


def bench_ref_processes(n: int) -> tuple[float, int]:
    lines = ref_rule_lines(n)
    t0 = time.perf_counter()
    for line in lines:
        subprocess.run(["nft", line], check=True)
    elapsed = time.perf_counter() - t0
    subprocess.run(["nft", "delete table inet vnpref"], check=True)
    return elapsed, len(lines)


def bench_ref_batch(n: int) -> float:
    lines = ref_rule_lines(n)
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        t0 = time.perf_counter()
        subprocess.run(["nft", "-f", path], check=True)
        elapsed = time.perf_counter() - t0
    finally:
        os.unlink(path)
        subprocess.run(["nft", "delete table inet vnpref"], check=False)
    return elapsed


def inner(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp)
        (policy_dir / "bench-five.yaml").write_text(FIVE_RULES)
        small = bench_vnet(100, policy_dir, args.repeats)
        big = bench_vnet(args.guests, policy_dir, args.repeats)
    ref_proc, ref_lines = bench_ref_processes(args.ref_guests)
    ref_batch = bench_ref_batch(args.batch_guests)
    n = args.guests
    rows = [
        ("compile (pure Python, model -> JSON)", ms(small["compile"]), ms(big["compile"])),
        ("kernel check only (dry run)", ms(small["check"]), ms(big["check"])),
        ("**full apply** (check + one transaction)", ms(small["replace"]), ms(big["replace"])),
        ("full apply over the same ruleset", ms(small["replace_again"]),
         ms(big["replace_again"])),
        ("compile + full apply", ms(small["compile"] + small["replace"]),
         ms(big["compile"] + big["replace"])),
        ("**add one guest** (median)", ms(small["add"]), ms(big["add"])),
        ("**remove one guest** (median)", ms(small["remove"]), ms(big["remove"])),
        ("add one guest (p90)", ms(small["add_p90"]), ms(big["add_p90"])),
        ("**lease binding update** (median)", ms(small["move"]), ms(big["move"])),
        ("JSON document size", f"{small['doc_bytes'] / 1e3:.0f} kB",
         f"{big['doc_bytes'] / 1e6:.1f} MB"),
    ]
    print(f"| vnet (clean-traffic + 5 rules per guest) | N=100 | N={n} |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print()
    print("| reference | guests | time |")
    print("|---|---|---|")
    print(f"| per-rule style: each rule its own `nft` process ({ref_lines} commands) "
          f"| {args.ref_guests} | {ms(ref_proc)} |")
    print(f"| linear per-guest chains, one `nft -f` transaction | {args.batch_guests} "
          f"| {ms(ref_batch)} |")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=10_000)
    parser.add_argument("--ref-guests", type=int, default=100)
    parser.add_argument("--batch-guests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return 0
    ns = f"vnpbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: "
              f"{platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
              f"Python {platform.python_version()}")
        print("command: flock /tmp/vnet-bench.lock .venv/bin/python bench/policy.py "
              + " ".join(sys.argv[1:]))
        print()
        sys.stdout.flush()
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                               *sys.argv[1:]], check=False)
        return proc.returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
