"""The daemon's HTTP API, version 1: routes -> controller intents and reads.

Every route is listed in ``docs/openapi.yaml`` (a test holds the two together). Requests are
checked here (types, required fields) and turned into one controller call; the answer is the
outcome. Errors: ``{"error": ..., "detail": ...}`` with 400 (bad request), 404 (no such
network/guest/port), 409 (conflicts with what exists), 422 (bad definition files), 500 (the
host refused a change), 504 (the change is still running). Must not touch the kernel itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vnet.controller import BadRequest, Conflict, Controller, NotFound, guest_json
from vnet.errors import ApiError, CapabilityError, ConfigError, ConflictError, HookError, HostError, VnetError
from vnet.http import HttpError, Request, Response, Router
from vnet.leases import lease_json, store_for
from vnet.model import Network

API = "/v1"


def error_status(exc: Exception) -> int | None:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict | ConflictError | CapabilityError):
        return 409
    if isinstance(exc, ConfigError):
        return 422
    if isinstance(exc, HostError):
        return 500
    if isinstance(exc, BadRequest | HookError):
        return 400
    if isinstance(exc, ApiError) and "still in progress" in str(exc):
        return 504
    return 400 if isinstance(exc, VnetError) else None


def _str(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise HttpError(400, f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"field {key!r} must be a string", f"got {type(value).__name__}")
    return value


def _strs(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HttpError(400, f"field {key!r} must be a list of strings")
    return value


def _only(body: dict[str, Any], keys: set[str]) -> None:
    extra = sorted(set(body) - keys)
    if extra:
        raise HttpError(400, f"unknown field {extra[0]!r}", f"known: {', '.join(sorted(keys))}")


class Api:
    """The v1 handlers of one daemon."""

    def __init__(self, controller: Controller, state_dir: Path, started: float,
                 hooks: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.c = controller
        self.state_dir = state_dir
        self.started = started
        self.hooks = hooks

    def router(self) -> Router:
        r = Router()
        r.add("GET", f"{API}/status", self.status)
        r.add("GET", f"{API}/networks", self.networks)
        r.add("GET", f"{API}/networks/{{network}}", self.network)
        r.add("GET", f"{API}/networks/{{network}}/guests", self.guests)
        r.add("POST", f"{API}/networks/{{network}}/guests", self.guest_add)
        r.add("GET", f"{API}/networks/{{network}}/guests/{{guest}}", self.guest)
        r.add("DELETE", f"{API}/networks/{{network}}/guests/{{guest}}", self.guest_del)
        r.add("GET", f"{API}/networks/{{network}}/guests/{{guest}}/check", self.guest_check)
        r.add("GET", f"{API}/leases", self.leases)
        r.add("GET", f"{API}/plan", self.plan)
        r.add("POST", f"{API}/reload", self.reload)
        r.add("POST", f"{API}/gc", self.gc)
        r.add("POST", f"{API}/hooks/qemu", self.hook_qemu)
        r.add("POST", f"{API}/hooks/libvirt", self.hook_libvirt)
        r.add("GET", "/metrics", self.metrics)
        return r

    # ----- reads -----

    def status(self, _req: Request) -> Response:
        model, problems = self.c.snapshot()
        return Response.json({
            "pid": os.getpid(), "uptime": time.time() - self.started,
            "networks": self.c.service_stats(), "problems": problems,
            "guests": sum(len(n.guests) for n in model.networks),
        })

    def networks(self, _req: Request) -> Response:
        model, _ = self.c.snapshot()
        return Response.json([self._net_json(n.name) for n in model.networks])

    def _network(self, name: str) -> Network:
        model, _ = self.c.snapshot()
        net = model.network(name)
        if net is None:
            raise NotFound(f"no network named {name!r} is defined "
                           f"(defined: {', '.join(n.name for n in model.networks) or 'none'})")
        return net

    def _net_json(self, name: str) -> dict[str, Any]:
        net = self._network(name)
        _, problems = self.c.snapshot()
        out: dict[str, Any] = {
            "name": net.name, "mode": str(net.mode), "source": net.source,
            "bridge": net.bridge.name if net.bridge else None,
            "uplink": net.uplink.device if net.uplink else None,
            "ipv4": str(net.ipv4.address) if net.ipv4 else None,
            "policies": list(net.policies), "guests": len(net.guests),
            "services": self.c.service_stats().get(net.name, {}),
            "problems": problems.get(net.name, []),
        }
        return out

    def network(self, req: Request) -> Response:
        return Response.json(self._net_json(req.params["network"]))

    def guests(self, req: Request) -> Response:
        net = self._network(req.params["network"])
        leased = self._leased(net.name)
        return Response.json([self._with_lease(guest_json(net, g), leased) for g in net.guests])

    def guest(self, req: Request) -> Response:
        port = self.c.port(req.params["network"], req.params["guest"])
        return Response.json(self._with_lease(port, self._leased(port["network"])))

    def _leased(self, network: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in store_for(self.state_dir).all_leases(network):
            if r.active:
                out[r.mac] = str(r.ip)
        return out

    def _with_lease(self, port: dict[str, Any], leased: dict[str, str]) -> dict[str, Any]:
        if port.get("ip") is None and port["mac"] in leased:
            port["ip"] = leased[port["mac"]]
        port["leased"] = port["mac"] in leased
        return port

    def leases(self, req: Request) -> Response:
        networks = req.query.get("network")
        network = networks[0] if networks else None
        if network is not None:
            self._network(network)  # 404 naming the defined networks
        return Response.json([lease_json(r) for r in store_for(self.state_dir).all_leases(network)])

    def guest_check(self, req: Request) -> Response:
        result = self.c.submit("check-guest", network=req.params["network"],
                               guest=req.params["guest"])
        return Response.json(result)

    # ----- changes -----

    def guest_add(self, req: Request) -> Response:
        body = req.json()
        _only(body, {"guest", "mac", "ifname", "port", "policies", "netns", "origin"})
        port = self.c.submit(
            "attach", network=req.params["network"], guest=_str(body, "guest"),
            mac=_str(body, "mac"), ifname=_str(body, "ifname", False),
            port=_str(body, "port", False) or "tap", policies=_strs(body, "policies"),
            netns=_str(body, "netns", False), origin=_str(body, "origin", False) or "api")
        created = bool(port.get("changes"))
        return Response.json(port, status=201 if created else 200)

    def guest_del(self, req: Request) -> Response:
        return Response.json(self.c.submit("detach", network=req.params["network"],
                                           guest=req.params["guest"]))

    def plan(self, req: Request) -> Response:
        return Response.json(self.c.submit("plan", networks=req.query.get("network", [])))

    def reload(self, _req: Request) -> Response:
        return Response.json(self.c.submit("reload", timeout=120.0))

    def gc(self, req: Request) -> Response:
        body = req.json()
        _only(body, {"network", "live"})
        if "live" not in body:
            raise HttpError(400, "missing field 'live'", "the guests still running (a list)")
        return Response.json(self.c.submit("gc", network=_str(body, "network"),
                                           live=_strs(body, "live")))

    def hook_qemu(self, req: Request) -> Response:
        body = req.json()
        _only(body, {"action", "ifname"})
        action, ifname = _str(body, "action"), _str(body, "ifname")
        if action == "ifup":
            return Response.json(self.c.submit("port-up", ifname=ifname))
        if action == "ifdown":  # QEMU closes the TAP itself right after; nothing to undo
            return Response.json({"ifname": ifname, "changes": []})
        raise HttpError(400, f"unknown qemu hook action {action!r}", "ifup or ifdown")

    def hook_libvirt(self, req: Request) -> Response:
        if self.hooks is None:
            raise HttpError(501, "libvirt hooks are not available")
        return Response.json(self.hooks(req.json()))

    def metrics(self, _req: Request) -> Response:
        return Response.text(render_metrics(self.c, self.state_dir))


def render_metrics(c: Controller, state_dir: Path) -> str:
    """Prometheus text format (0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:g}")

    model, _ = c.snapshot()
    stats = c.service_stats()
    leases: dict[str, int] = {}
    for r in store_for(state_dir).all_leases(None):
        if r.active:
            leases[r.network] = leases.get(r.network, 0) + 1
    used, free, ports = [], [], []
    for net in model.networks:
        lab = f'{{network="{net.name}"}}'
        ports.append((lab, float(len(net.guests))))
        if net.ipv4 is not None and net.ipv4.dhcp is not None:
            size = sum(rg.size for rg in net.ipv4.dhcp.ranges)
            in_range = sum(1 for r in store_for(state_dir).all_leases(net.name)
                           if r.active and any(r.ip in rg for rg in net.ipv4.dhcp.ranges))
            used.append((lab, float(in_range)))
            free.append((lab, float(max(0, size - in_range))))
    metric("vnet_ports", "gauge", "Guest ports per network.", ports)
    metric("vnet_dhcp_pool_used", "gauge", "Active leases inside the DHCP ranges.", used)
    metric("vnet_dhcp_pool_free", "gauge", "Free addresses in the DHCP ranges.", free)
    metric("vnet_leases_active", "gauge", "Active leases (ranges and reservations).",
           [(f'{{network="{n}"}}', float(v)) for n, v in sorted(leases.items())])
    requests: list[tuple[str, float]] = []
    drops: list[tuple[str, float]] = []
    drop_keys = {"dhcp": ("malformed", "relay_refused", "rate_limited", "ignored", "mac_cap",
                          "share_cap", "send_errors"),
                 "dns": ("dropped", "refused", "errors"),
                 "tftp": ("errors", "refused", "timed-out")}
    request_keys = {"dhcp": ("received",), "dns": ("hits", "misses"), "tftp": ("requests",)}
    for network, services in sorted(stats.items()):
        for service, counters in sorted(services.items()):
            total = sum(counters.get(k, 0) for k in request_keys.get(service, ()))
            lab = f'{{network="{network}",service="{service}"}}'
            if service in request_keys:
                requests.append((lab, float(total)))
            for key in drop_keys.get(service, ()):
                if key in counters:
                    drops.append((f'{{network="{network}",service="{service}",reason="{key}"}}',
                                  float(counters[key])))
    metric("vnet_requests_total", "counter", "Requests received by the network services.",
           requests)
    metric("vnet_drops_total", "counter", "Requests dropped or refused, by reason.", drops)
    for name, hist, help_text in (
            ("vnet_reconcile_seconds", c.reconcile_latency, "Time per reconcile intent."),
            ("vnet_nft_apply_seconds", c.nft_latency, "Time per nftables change.")):
        buckets, seconds, n = hist.snapshot()
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} histogram")
        for bound, count in buckets:
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {n}')
        lines.append(f"{name}_sum {seconds:g}")
        lines.append(f"{name}_count {n}")
    metric("vnet_reconciles_total", "counter", "Reconcile intents run.",
           [("", float(c.counters["reconciles"]))])
    metric("vnet_reconcile_errors_total", "counter", "Reconcile intents that failed.",
           [("", float(c.counters["reconcile_errors"]))])
    metric("vnet_repairs_total", "counter", "Drift repairs (someone changed vnet's links).",
           [("", float(c.counters["repairs"]))])
    return "\n".join(lines) + "\n"

