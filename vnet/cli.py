"""The ``vnet`` command line: parses arguments, calls one command module, prints, exits.

Thin by design: every command lives in ``vnet.commands.<name>``. Exit codes: 0 success,
1 failure while acting on the host or daemon, 2 bad input (files, arguments).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vnet.errors import ConfigError, VnetError

# Command modules, in help order. A module listed here that does not exist yet is skipped.
COMMANDS = (
    "validate",
    "schema",
    "plan",
    "apply",
    "down",
    "status",
    "daemon",
    "leases",
    "policy",
    "doctor",
    "guest",
    "gc",
    "net",
    "hook",
)

DEFAULTS = {
    "config_dir": ("VNET_CONFIG_DIR", "/etc/vnet/networks"),
    "state_dir": ("VNET_STATE_DIR", "/var/lib/vnet"),
    "run_dir": ("VNET_RUN_DIR", "/run/vnet"),
    "policy_dir": ("VNET_POLICY_DIR", "/etc/vnet/policies"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vnet", description="Virtual networks for KVM/QEMU hosts, described in files and kept real."
    )
    common = argparse.ArgumentParser(add_help=False)
    for dest, (env, default) in DEFAULTS.items():
        flag = "--" + dest.replace("_", "-")
        common.add_argument(
            flag,
            dest=dest,
            type=Path,
            default=argparse.SUPPRESS,
            help=f"(env {env}, default {default})",
        )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    for dest, (env, default) in DEFAULTS.items():
        parser.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, type=Path, default=argparse.SUPPRESS,
            help=f"(env {env}, default {default})",
        )
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vnet.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"vnet.commands.{name}":
                continue
            raise
        module.register(sub, common)
    return parser


def resolve_dirs(args: argparse.Namespace) -> None:
    """Fill unset directory options from the environment, then the defaults."""
    for dest, (env, default) in DEFAULTS.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, Path(os.environ.get(env, default)))
    if not hasattr(args, "verbose"):
        args.verbose = False


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["hook"]:  # one process per guest start: skip the parser and its imports
        from vnet.hook import main as hook_main

        return hook_main(args_in[1:])
    parser = build_parser()
    args = parser.parse_args(args_in)
    resolve_dirs(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    except VnetError as err:
        print(f"vnet: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
