"""``vnet plan [NET...]``: the ordered actions apply would take, or "no changes". Changes nothing."""

from __future__ import annotations

import argparse
from typing import Any

from vnet import api
from vnet.commands._common import model_of, print_json
from vnet.reconcile import check_capabilities, plan_model, select


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("plan", parents=[common], help="show what apply would change")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vnet.commands.status import daemon_status

    if daemon_status(args.run_dir) is not None:  # the daemon knows what its tables hold
        query = "".join(f"&network={api.quote(n)}" for n in args.networks).lstrip("&")
        lines = api.call(args.run_dir, "GET", "/v1/plan" + (f"?{query}" if query else ""),
                         timeout=120)["changes"]
        if args.json:
            print_json([{"op": "planned", "text": line} for line in lines])
        else:
            print("\n".join(lines) if lines else "no changes")
        return 0
    model = model_of(args)
    check_capabilities(select(model, args.networks))
    planned = plan_model(model, args.networks, policy_dir=args.policy_dir, state_dir=args.state_dir)
    if args.json:
        data = [a.as_dict() for a in planned.actions]
        if planned.filters is not None and planned.filters.change:
            data.append({"op": "nftables", "text": planned.filters.change})
        print_json(data)
    elif not planned.lines:
        print("no changes")
    else:
        for line in planned.lines:
            print(line)
    return 0
