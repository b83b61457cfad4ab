"""``vnet apply [NET...]``: make the host match the definitions; prints what it did.

With a daemon running on the run dir, the daemon does it (``POST /v1/reload``: every network),
so its tables, ports and services stay one consistent state.
"""

from __future__ import annotations

import argparse
from typing import Any

from vnet import api
from vnet.commands._common import model_of, print_json
from vnet.reconcile import apply_model


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("apply", parents=[common], help="create/modify/delete to match definitions")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vnet.commands.status import daemon_status

    if daemon_status(args.run_dir) is not None:
        # One path for every change: the daemon applies (it owns the tables and the ports).
        done = api.call(args.run_dir, "POST", "/v1/reload", timeout=120)["changes"]
    else:
        done = apply_model(model_of(args), args.networks, policy_dir=args.policy_dir,
                           state_dir=args.state_dir)
    if args.json:
        print_json(done)
    elif not done:
        print("no changes")
    else:
        for line in done:
            print(line)
    return 0
