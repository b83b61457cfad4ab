"""Helpers shared by command modules: loading the model, printing JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vnet.config import load_model
from vnet.model import Model


def model_of(args: argparse.Namespace) -> Model:
    """Desired state: the definition files + the guests attached at run time (state dir)."""
    from vnet.attachments import read_attachments
    from vnet.guests import with_attachments

    return with_attachments(load_model(args.config_dir, args.policy_dir),
                            read_attachments(args.state_dir))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
