"""``vnet validate [PATH...]``: check definition files; list every problem as FILE:LINE: key: message."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vnet.config import validate_paths


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("validate", parents=[common], help="check definition files, list every problem")
    p.add_argument("paths", nargs="*", type=str, metavar="PATH",
                   help="files or directories (default: the config dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    paths = [Path(p) for p in args.paths] or [args.config_dir]
    problems = validate_paths(paths, args.policy_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 2
    print("ok")
    return 0
