"""``vnet net list|show NET``: the networks the daemon runs, with services and problems."""

from __future__ import annotations

import argparse
from typing import Any

from vnet import api
from vnet.commands._common import print_json


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("net", parents=[common], help="networks as the daemon runs them")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", parents=[common], help="every network")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    show = verbs.add_parser("show", parents=[common], help="one network in full")
    show.add_argument("network", metavar="NET")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)


def _line(n: dict[str, Any]) -> str:
    where = n["bridge"] or n["uplink"] or "-"
    state = "; ".join(n["problems"]) or "serving " + (", ".join(sorted(n["services"])) or "nothing")
    return f"{n['name']} ({n['mode']}, {where}, {n['ipv4'] or 'no IPv4'}): {n['guests']} guests, {state}"


def run_list(args: argparse.Namespace) -> int:
    rows = api.call(args.run_dir, "GET", "/v1/networks")
    if args.json:
        print_json(rows)
    elif not rows:
        print("no networks")
    else:
        for n in rows:
            print(_line(n))
    return 0


def run_show(args: argparse.Namespace) -> int:
    n = api.call(args.run_dir, "GET", f"/v1/networks/{api.quote(args.network)}")
    guests = api.call(args.run_dir, "GET", f"/v1/networks/{api.quote(args.network)}/guests")
    if args.json:
        print_json(n | {"guests": guests})
        return 0
    print(_line(n))
    print(f"  defined in {n['source']}; policies {', '.join(n['policies']) or 'none'}")
    for g in guests:
        print(f"  guest {g['guest']}: {g['ifname']} ({g['port']}, {g['mac']}) "
              f"{g.get('ip') or 'no address'} from {g['origin']}")
    for service, counters in sorted(n["services"].items()):
        print(f"  {service}: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return 0
