"""``vnet down [NET...]``: remove everything vnet made for the networks (all when none given)."""

from __future__ import annotations

import argparse
from typing import Any

from vnet.commands._common import model_of, print_json
from vnet.errors import ConfigError
from vnet.host import netlink
from vnet.model import Model
from vnet.reconcile import down, owned_networks


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("down", parents=[common], help="remove what vnet made for networks")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model: Model | None
    try:
        model = model_of(args)
    except ConfigError:
        model = None  # down must work even when the definitions are broken or gone
    names = args.networks or sorted(set(owned_networks(netlink.observe(addresses_of=())))
                                    | {n.name for n in (model.networks if model else ())})
    if not args.networks and model is not None:
        model = Model()  # everything goes down: no tables remain
    done = down(names, model, policy_dir=args.policy_dir, state_dir=args.state_dir)
    if args.json:
        print_json(done)
    elif not done:
        print("nothing to remove")
    else:
        for line in done:
            print(line)
    return 0
