"""``vnet guest add|del|check|list``: guests attached at run time, through the daemon's API.

``add`` is idempotent (the same guest and port again: the same port, no new link) and prints
the port; ``del`` is idempotent and best-effort; ``check`` exits 0 when the port, its policies
and bindings are as wanted, 1 with the drift otherwise (CNI's ADD/DEL/CHECK).
"""

from __future__ import annotations

import argparse
from typing import Any

from vnet import api
from vnet.commands._common import print_json


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("guest", parents=[common], help="attach, detach, check and list guests")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", parents=[common], help="attach a guest's port to a network")
    add.add_argument("network", metavar="NET")
    add.add_argument("guest", metavar="NAME")
    add.add_argument("--mac", required=True, help="the guest NIC's MAC (QEMU's mac=)")
    add.add_argument("--port", choices=("tap", "macvtap", "veth"), default="tap")
    add.add_argument("--ifname", help="host-side device name (default NET-NAME or a hash)")
    add.add_argument("--policy", action="append", default=[], dest="policies", metavar="P",
                     help="a filter policy on top of the network's (repeatable)")
    add.add_argument("--netns", help="port veth: the guest's network namespace")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=run_add)
    rm = verbs.add_parser("del", parents=[common], help="detach a guest (idempotent)")
    rm.add_argument("network", metavar="NET")
    rm.add_argument("guest", metavar="NAME")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=run_del)
    check = verbs.add_parser("check", parents=[common], help="exit 0 when the guest's port is as wanted")
    check.add_argument("network", metavar="NET")
    check.add_argument("guest", metavar="NAME")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=run_check)
    ls = verbs.add_parser("list", parents=[common], help="guests of one or every network")
    ls.add_argument("network", nargs="?", metavar="NET")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)


def _path(network: str, guest: str | None = None) -> str:
    out = f"/v1/networks/{api.quote(network)}/guests"
    return out + (f"/{api.quote(guest)}" if guest is not None else "")


def _port_line(p: dict[str, Any]) -> str:
    ip = p.get("ip") or "no address yet"
    policies = ",".join(p.get("policies", [])) or "none"
    return (f"{p['network']}/{p['guest']}: port {p['ifname']} ({p['port']}, {p['mac']}), {ip}, "
            f"policies {policies}, from {p['origin']}")


def run_add(args: argparse.Namespace) -> int:
    body = {"guest": args.guest, "mac": args.mac, "port": args.port, "policies": args.policies}
    if args.ifname:
        body["ifname"] = args.ifname
    if args.netns:
        body["netns"] = args.netns
    port = api.call(args.run_dir, "POST", _path(args.network), body, timeout=60)
    if args.json:
        print_json(port)
    else:
        print(_port_line(port))
    return 0


def run_del(args: argparse.Namespace) -> int:
    result = api.call(args.run_dir, "DELETE", _path(args.network, args.guest), timeout=60)
    if args.json:
        print_json(result)
    else:
        print(f"removed {args.network}/{args.guest}" if result.get("removed")
              else f"{args.network}/{args.guest}: not attached (nothing to do)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    result = api.call(args.run_dir, "GET", _path(args.network, args.guest) + "/check", timeout=60)
    if args.json:
        print_json(result)
    elif result["in_sync"]:
        print(f"{args.network}/{args.guest}: in sync ({result['ifname']})")
    else:
        print(f"{args.network}/{args.guest}: drift:")
        for line in result["drift"]:
            print(f"  {line}")
    return 0 if result["in_sync"] else 1


def run_list(args: argparse.Namespace) -> int:
    if args.network:
        rows = api.call(args.run_dir, "GET", _path(args.network))
    else:
        rows = [g for n in api.call(args.run_dir, "GET", "/v1/networks")
                for g in api.call(args.run_dir, "GET", _path(n["name"]))]
    if args.json:
        print_json(rows)
    elif not rows:
        print("no guests")
    else:
        for p in rows:
            print(_port_line(p))
    return 0
