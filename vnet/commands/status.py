"""``vnet status [--json]``: networks, their bridge and ports (device names) and their state."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vnet import api
from vnet.commands._common import model_of, print_json
from vnet.errors import ApiError, VnetError
from vnet.host import netlink
from vnet.model import Model
from vnet.plan import Observed, PlanConflict, desired_model, plan, restrict
from vnet.reconcile import owned_networks, unknown_ports


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="show networks, ports and their state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def status_of(model: Model, observed: Observed, mismatches: dict[str, int] | None = None,
              problems: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Per network: in sync or not, the bridge, each port with its device and state, ports on
    the bridge that are no guest's, frames from unexpected MACs. Pure.

    ``problems``: what the daemon reports per network (a service not serving); such a network
    is never "in sync"."""
    have = observed.by_name()
    mismatches = mismatches or {}
    problems = problems or {}
    unknown = unknown_ports(model, observed)
    out: list[dict[str, Any]] = []
    defined = {n.name for n in model.networks}
    for net in model.networks:
        desired = restrict(desired_model([net]), [net.name])
        try:
            pending = len(plan(desired, observed, scope=[net.name]))
            sync = "in sync" if pending == 0 else f"{pending} change(s) pending"
        except PlanConflict as err:
            sync = f"conflict: {err}"
        if problems.get(net.name):
            sync = "not serving: " + "; ".join(problems[net.name])
        entry: dict[str, Any] = {"name": net.name, "mode": str(net.mode), "source": net.source,
                                 "state": sync, "ports": [],
                                 "unknown_ports": unknown.get(net.name, [])}
        if net.bridge is not None:
            br = have.get(net.bridge.name)
            entry["bridge"] = {
                "ifname": net.bridge.name,
                "state": _state(br),
                "addresses": [str(a) for a in br.addresses] if br else [],
            }
        if net.uplink is not None:
            up = have.get(net.uplink.device)
            entry["uplink"] = {"ifname": net.uplink.device, "state": _state(up)}
        for g in net.guests:
            link = have.get(g.ifname)
            entry["ports"].append({
                "guest": g.name, "ifname": g.ifname, "kind": str(g.port), "mac": g.mac,
                "state": _state(link), "carrier": bool(link and link.carrier),
                "master": link.master if link else None, "origin": str(g.origin),
                "unexpected_mac_frames": mismatches.get(g.ifname, 0),
            })
        out.append(entry)
    for name in owned_networks(observed):
        if name not in defined:
            links = [link.ifname for link in observed.links if link.owner_network == name]
            out.append({"name": name, "state": "not defined (run 'vnet down NET' or 'vnet apply')",
                        "links": links, "ports": []})
    return out


def _state(link: Any) -> str:
    if link is None:
        return "missing"
    return "up" if link.up else "down"


def daemon_status(run_dir: Path) -> dict[str, Any] | None:
    """The daemon's service counters, or None when no daemon answers on ``run_dir``."""
    if not api.socket_path(run_dir).exists():
        return None
    try:
        reply = api.call(run_dir, "GET", "/v1/status", timeout=2.0)
    except ApiError:
        return None
    return reply if isinstance(reply, dict) else None


def run(args: argparse.Namespace) -> int:
    from vnet.host import nft

    model = model_of(args)
    observed = netlink.observe()
    daemon = daemon_status(args.run_dir)
    try:
        mismatches = nft.mac_mismatches()
    except VnetError:
        mismatches = {}
    data = status_of(model, observed, mismatches, (daemon or {}).get("problems"))
    for net in data:
        services = (daemon or {}).get("networks", {}).get(net["name"])
        if services is not None:
            net["services"] = services
    if args.json:
        print_json({"networks": data, "daemon": daemon})
        return 0
    if daemon is None:
        print(f"daemon: not running (no answer on {api.socket_path(args.run_dir)})")
    else:
        print(f"daemon: pid {daemon.get('pid')}, up {int(daemon.get('uptime', 0))} s")
    if not data:
        print("no networks defined")
    for net in data:
        print(f"network {net['name']} ({net.get('mode', '?')}): {net['state']}")
        if "bridge" in net:
            br = net["bridge"]
            addrs = " ".join(br["addresses"])
            print(f"  bridge {br['ifname']}: {br['state']} {addrs}".rstrip())
        if "uplink" in net:
            print(f"  uplink {net['uplink']['ifname']}: {net['uplink']['state']}")
        for p in net["ports"]:
            carrier = "carrier" if p["carrier"] else "no carrier"
            print(f"  port {p['ifname']} ({p['kind']}, guest {p['guest']}, {p['mac']}): "
                  f"{p['state']}, {carrier}")
            if p["unexpected_mac_frames"]:
                print(f"    {p['unexpected_mac_frames']} frames from a MAC other than {p['mac']} "
                      "(see vnet doctor)")
        for ifname in net.get("unknown_ports", []):
            print(f"  unknown port {ifname}: on the bridge but no guest's (isolated unless "
                  "unknown-ports: allow)")
        for link in net.get("links", []):
            print(f"  link {link}")
        for service, counters in sorted(net.get("services", {}).items()):
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))
            print(f"  {service}: {shown}")
    return 0
