"""``vnet leases [NET] [--json]``: the DHCP leases (MAC, IP, hostname, expiry, state).

Reads the lease database read-only, so it works with or without a running daemon.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from vnet.leases import lease_json, read_leases


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("leases", parents=[common], help="list DHCP leases")
    p.add_argument("network", nargs="?", help="only this network")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true",
                   help="also released, expired and declined leases")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    now = time.time()
    rows: list[dict[str, Any]] = [lease_json(r) for r in
                                  read_leases(args.state_dir / "leases.db", args.network)]
    for row in rows:
        if row["state"] == "bound" and row["expires"] <= now:
            row["state"] = "expired"
    if not args.all:
        rows = [r for r in rows if r["state"] == "bound"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no leases")
        return 0
    header = ("NETWORK", "MAC", "IP", "HOSTNAME", "EXPIRES", "STATE")
    table = [header] + [
        (
            r["network"], r["mac"], r["ip"], r["hostname"] or "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["expires"])), r["state"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
