"""``vnet gc NET --live NAME...``: detach every attached guest of NET not listed as live."""

from __future__ import annotations

import argparse
from typing import Any

from vnet import api
from vnet.commands._common import print_json


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("gc", parents=[common], help="detach attached guests that are not running")
    p.add_argument("network", metavar="NET")
    p.add_argument("--live", nargs="*", default=[], metavar="NAME",
                   help="the guests still running (all others attached at run time go)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = api.call(args.run_dir, "POST", "/v1/gc", {"network": args.network, "live": args.live},
                      timeout=120)
    if args.json:
        print_json(result)
    elif not result["removed"]:
        print("nothing to remove")
    else:
        for guest in result["removed"]:
            print(f"removed {args.network}/{guest}")
    return 0
