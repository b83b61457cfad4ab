"""``vnet hook ...``: listed here for ``--help``; ``vnet.cli`` runs ``vnet.hook`` before parsing."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("hook", help="QEMU script= / libvirt qemu.d entry points (see docs/hooks.md)")
    p.add_argument("kind", choices=("qemu-ifup", "qemu-ifdown", "libvirt"))
    p.add_argument("args", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vnet.hook import main

    return main([args.kind, *args.args])
