"""``vnet plan [NET...]``: the ordered actions apply would take, or "no changes". Changes nothing."""

from __future__ import annotations

import argparse
from typing import Any

from vnet.commands._common import model_of, print_json
from vnet.reconcile import check_capabilities, plan_model, select


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("plan", parents=[common], help="show what apply would change")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = model_of(args)
    check_capabilities(select(model, args.networks))
    planned = plan_model(model, args.networks)
    if args.json:
        print_json([a.as_dict() for a in planned.actions])
    elif not planned.actions:
        print("no changes")
    else:
        for a in planned.actions:
            print(a.describe())
    return 0
