"""``vnet validate [PATH...]``: check definition files; list every problem as FILE:LINE: key: message."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vnet.config import check_paths
from vnet.errors import ConfigError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("validate", parents=[common], help="check definition files, list every problem")
    p.add_argument("paths", nargs="*", type=str, metavar="PATH",
                   help="files or directories (default: the config dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vnet.policy import load_library, validate_policies

    paths = [Path(p) for p in args.paths] or [args.config_dir]
    policy_dir = args.policy_dir if args.policy_dir.is_dir() else None
    problems, model = check_paths(paths, policy_dir)
    try:
        load_library(policy_dir)  # the policy files themselves, FILE:LINE
    except ConfigError as err:
        problems += err.problems
    if not problems:  # how the networks use policies (needs a consistent model)
        problems += validate_policies(model, policy_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 2
    print("ok")
    return 0
