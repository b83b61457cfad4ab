"""``vnet schema``: print the JSON Schema of network definition files (for editors)."""

from __future__ import annotations

import argparse
from typing import Any

from vnet.commands._common import print_json
from vnet.schema import network_schema


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("schema", parents=[common], help="print the JSON Schema of definition files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print_json(network_schema())
    return 0
