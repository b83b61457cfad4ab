"""``vnet policy compile`` and ``vnet policy explain``: the dry-run twins of the filter apply.

``compile`` prints exactly the nftables document ``vnet apply`` would load (``--json``), or a
readable rendering of it; ``explain`` follows one packet through the same profiles and names the
deciding rule (FILE:LINE). Both read the definitions, the policy files and the lease database;
neither touches the kernel except to read the br_netfilter sysctls that decide which stage
evaluates IP packets.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from vnet.commands._common import model_of, print_json
from vnet.errors import ConfigError, Problem
from vnet.model import Model

HANDOFF_SYSCTLS = {"ip": "net.bridge.bridge-nf-call-iptables",
                   "ip6": "net.bridge.bridge-nf-call-ip6tables"}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("policy", parents=[common], help="compile or explain filter policies")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    c = psub.add_parser("compile", parents=[common],
                        help="print the nftables rules vnet apply would load")
    c.add_argument("--network", action="append", default=[], metavar="N",
                   help="only this network (repeatable); ids are then those of this subset")
    c.add_argument("--json", action="store_true", help="the exact libnftables JSON document")
    c.add_argument("--stateless", action="store_true",
                   help="compile as if br_netfilter were off (every frame in the bridge table)")
    c.set_defaults(func=run_compile)
    e = psub.add_parser("explain", parents=[common],
                        help="would a packet pass? names the deciding rule")
    e.add_argument("--from", dest="source", required=True, metavar="GUEST",
                   help="guest name, or NETWORK/GUEST")
    e.add_argument("--to", dest="target", required=True, metavar="ADDR[:PORT/PROTO]",
                   help="e.g. 10.77.0.10:80/tcp, 10.77.0.1:53/udp, 192.0.2.1 (ping)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_explain)


def _policy_dir(args: argparse.Namespace) -> Path | None:
    path: Path = args.policy_dir
    return path if path.is_dir() else None


def _leases(state_dir: Path) -> dict[tuple[str, str], set[ipaddress.IPv4Address]]:
    from vnet.leases import read_leases

    out: dict[tuple[str, str], set[ipaddress.IPv4Address]] = {}
    for record in read_leases(state_dir / "leases.db", active_only=True):
        out.setdefault((record.network, record.mac), set()).add(record.ip)
    return out


def _handoff(stateless: bool) -> frozenset[str]:
    if stateless:
        return frozenset()
    from vnet.host import netlink

    # as vnet apply decides: a family is handed to the inet stage only when its sysctl is 1
    # (absent when br_netfilter is not loaded: then everything is filtered in the bridge table)
    values = dict(netlink.read_sysctls(tuple(HANDOFF_SYSCTLS.values())))
    return frozenset(f for f, key in HANDOFF_SYSCTLS.items() if values.get(key) == "1")


def _select(model: Model, names: list[str]) -> Model:
    if not names:
        return model
    unknown = sorted(set(names) - {n.name for n in model.networks})
    if unknown:
        raise ConfigError([Problem("--network", 0, "", f"no network {n!r}") for n in unknown])
    return replace(model, networks=tuple(n for n in model.networks if n.name in names))


def run_compile(args: argparse.Namespace) -> int:
    from vnet.policy import compile_state, load_library
    from vnet.policy.render import render

    model = _select(model_of(args), args.network)
    library = load_library(_policy_dir(args))
    compiled = compile_state(model, library, _leases(args.state_dir),
                             handoff=_handoff(args.stateless))
    doc = compiled.document()
    if args.json:
        print_json(doc)
        return 0
    sys.stdout.write(render(doc))
    for note in compiled.notes:
        print(f"# note: {note}")
    for (net, names), (out_chain, in_chain) in compiled.profiles.items():
        print(f"# {net}: {', '.join(names)} -> chains {out_chain} / {in_chain}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from vnet.policy import load_library
    from vnet.policy.explain import explain, explanation_dict

    model = model_of(args)
    library = load_library(_policy_dir(args))
    try:
        result = explain(model, library, args.source, args.target, _leases(args.state_dir))
    except ValueError as err:
        raise ConfigError([Problem("explain", 0, "", str(err))]) from err
    if args.json:
        print_json(explanation_dict(result))
        return 0
    p = result.packet
    port = f":{p.dport}" if p.dport is not None else ""
    print(f"{p.src} -> {p.dst}{port}/{p.proto} (new connection)")
    for step in result.steps:
        print(f"  {step.stage}: {step.verdict}  ({step.reason})")
    print(f"{result.verdict.upper()}: {result.deciding.reason}")
    return 0
