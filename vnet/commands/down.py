"""``vnet down [NET...]``: remove everything vnet made for the networks (all when none given)."""

from __future__ import annotations

import argparse
from typing import Any

from vnet.commands._common import print_json
from vnet.host import netlink
from vnet.reconcile import down, owned_networks


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("down", parents=[common], help="remove what vnet made for networks")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = args.networks or owned_networks(netlink.observe(addresses_of=()))
    done = down(names)
    if args.json:
        print_json(done)
    elif not done:
        print("nothing to remove")
    else:
        for line in done:
            print(line)
    return 0
