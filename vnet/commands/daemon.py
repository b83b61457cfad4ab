"""``vnet daemon``: run the controller in the foreground (see ``vnet.daemon``)."""

from __future__ import annotations

import argparse
from typing import Any

from vnet.daemon import DaemonOptions
from vnet.daemon import run as run_daemon


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "daemon", parents=[common],
        help="run the controller (DHCP, DNS, TFTP, API) in the foreground",
    )
    p.add_argument(
        "--no-apply", action="store_true",
        help="do not create or change bridges and ports; serve on what exists",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_daemon(
        DaemonOptions(
            config_dir=args.config_dir,
            state_dir=args.state_dir,
            run_dir=args.run_dir,
            policy_dir=args.policy_dir,
            apply_l2=not args.no_apply,
        )
    )
