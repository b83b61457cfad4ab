"""``vnet doctor``: find what breaks guests on this host and explain each finding and its fix.

Reads only: sysctls, the headers of other tables' base chains (hook, priority, policy; never
their rules), whether vnet's own tables are loaded, and the names of legacy iptables tables.
The diagnosis itself is ``vnet.policy.doctor.diagnose`` (pure). Exit 0: nothing found;
1: at least one error; warnings alone exit 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vnet.commands._common import print_json
from vnet.errors import ConfigError
from vnet.model import Model


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common],
                       help="find host settings that break guest networking")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def gather(model: Model | None = None) -> Any:
    from vnet.host import netlink, nft
    from vnet.policy.doctor import SYSCTLS, BaseChain, HostFacts
    from vnet.reconcile import unknown_ports

    chains = tuple(BaseChain(c["family"], c["table"], c["name"], c["hook"], int(c["prio"]),
                             c.get("policy") or "accept")
                   for c in nft.base_chains_elsewhere())
    legacy_path = Path("/proc/net/ip_tables_names")
    legacy = tuple(legacy_path.read_text().split()) if legacy_path.exists() else ()
    return HostFacts(
        sysctls=dict(netlink.read_sysctls(SYSCTLS)),
        foreign_chains=chains,
        vnet_tables=nft.owned_tables_present(),
        legacy_iptables=legacy,
        mac_mismatches=nft.mac_mismatches(),
        unknown_ports=unknown_ports(model or Model(), netlink.observe(addresses_of=())),
    )


def run(args: argparse.Namespace) -> int:
    from vnet.commands._common import model_of
    from vnet.policy.doctor import diagnose

    try:
        model = model_of(args)
    except ConfigError as err:
        print(f"vnet: definitions have problems (vnet validate); checking the host only:\n{err}",
              file=sys.stderr)
        model = Model()
    findings = diagnose(model, gather(model))
    if args.json:
        print_json([f.__dict__ for f in findings])
    elif not findings:
        print("no problems found")
    for f in findings if not args.json else ():
        print(f"{f.severity}: {f.title}\n  why: {f.why}\n  fix: {f.fix}")
    return 1 if any(f.severity == "error" for f in findings) else 0
