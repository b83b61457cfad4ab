"""``vnet down [NET...]``: remove everything vnet made for the networks (all when none given).

Refuses (exit 1, naming them) while guests are running on the networks' ports (a TAP that a
process, QEMU, holds open: it has carrier), and while a vnet daemon serves the run dir (it would
put the networks back); ``--force`` goes ahead anyway. A network that is neither defined nor
present is an error, like ``vnet plan NET``.
"""

from __future__ import annotations

import argparse
from typing import Any

from vnet.commands._common import model_of, print_json
from vnet.commands.status import daemon_status
from vnet.errors import ConfigError, HostError
from vnet.host import netlink
from vnet.model import Model
from vnet.naming import parse_alias
from vnet.plan import Observed
from vnet.reconcile import down, owned_networks


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("down", parents=[common], help="remove what vnet made for networks")
    p.add_argument("networks", nargs="*", metavar="NET")
    p.add_argument("--force", action="store_true",
                   help="also while guests run on the ports or a daemon serves the networks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def running_guests(observed: Observed, networks: list[str]) -> list[str]:
    """``guest (ifname)`` of every port of ``networks`` a guest is using right now."""
    out = []
    for link in observed.links:
        parsed = parse_alias(link.alias)
        if parsed is None or parsed[0] not in networks or parsed[1] != "port":
            continue
        if link.kind in ("tap", "tun") and (link.held or link.carrier):  # a process has it open
            out.append(f"{parsed[2]} ({link.ifname})")
    return sorted(out)


def run(args: argparse.Namespace) -> int:
    model: Model | None
    try:
        model = model_of(args)
    except ConfigError:
        model = None  # down must work even when the definitions are broken or gone
    observed = netlink.observe(addresses_of=())
    present = set(owned_networks(observed))
    defined = {n.name for n in (model.networks if model else ())}
    unknown = [n for n in args.networks if n not in present | defined]
    if unknown:
        known = ", ".join(sorted(present | defined)) or "none"
        raise HostError(f"no network named {unknown[0]!r} is defined or present (known: {known})")
    names = args.networks or sorted(present | defined)
    if not args.force:
        busy = running_guests(observed, names)
        if busy:
            raise HostError("guests are running on these networks: " + ", ".join(busy)
                            + "; stop them first, or use --force")
        daemon = daemon_status(args.run_dir)
        if daemon is not None:
            raise HostError(f"the vnet daemon (pid {daemon.get('pid')}) serves {args.run_dir} and "
                            "would put the networks back; stop it first, or use --force")
    if not args.networks and model is not None:
        model = Model()  # everything goes down: no tables remain
    done = down(names, model, policy_dir=args.policy_dir, state_dir=args.state_dir)
    if args.json:
        print_json(done)
    elif not done:
        print("nothing to remove")
    else:
        for line in done:
            print(line)
    return 0
