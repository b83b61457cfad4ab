"""``vnet policy explain``: would this packet pass, and which rule decides? Pure.

Evaluates the same flattened profiles the compiler turns into chains (``Library.profile``), in
the same order, for one packet: the sender's outbound flow, then the network's forwarding mode
or host access, then the receiver's inbound flow when the address belongs to a guest. The
packet is the first one of a connection (conntrack state ``new``), sent from the guest's first
bound address and its own MAC; rate limits are assumed not exceeded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from vnet.model import Guest, Mode, Model, Network
from vnet.policy.ast import Match, Rule, Value, rule_classes
from vnet.policy.compile import HOST_TCP_PORTS, HOST_UDP_PORTS, L3_MODES, Leases
from vnet.policy.library import Flow, Library

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
EPHEMERAL_PORT = 40000
HOST_ONLY = "guests reach the host only for DHCP, DNS and TFTP unless a 'host:' rule allows"


@dataclass(frozen=True)
class Packet:
    src: Address
    dst: Address
    proto: str  # tcp, udp, sctp, icmp, icmpv6
    dport: int | None
    src_mac: str
    dst_mac: str | None = None
    sport: int = EPHEMERAL_PORT
    icmp_type: str | None = None
    state: str = "new"

    @property
    def family(self) -> str:
        return "ip" if self.dst.version == 4 else "ip6"


@dataclass(frozen=True)
class Step:
    stage: str  # e.g. "web1 outbound", "network lab (nat)"
    verdict: str  # accept / drop / reject
    reason: str  # "vnet/policies/web-server.yaml:12 web-server inbound #2" or a sentence


@dataclass(frozen=True)
class Explanation:
    packet: Packet
    steps: tuple[Step, ...]

    @property
    def verdict(self) -> str:
        return next((s.verdict for s in self.steps if s.verdict != "accept"), "accept")

    @property
    def deciding(self) -> Step:
        return next((s for s in self.steps if s.verdict != "accept"), self.steps[-1])


def parse_target(text: str) -> tuple[Address, int | None, str]:
    """``10.0.0.5``, ``10.0.0.5:80/tcp``, ``[2001:db8::1]:53/udp`` -> (address, port, proto)."""
    m = re.fullmatch(r"\[(?P<a6>[0-9a-fA-F:.]+)\](?::(?P<p6>\d+))?(?:/(?P<r6>\w+))?"
                     r"|(?P<a4>[0-9.]+)(?::(?P<p4>\d+))?(?:/(?P<r4>\w+))?"
                     r"|(?P<bare6>[0-9a-fA-F:]*:[0-9a-fA-F:.]*)", text)
    if not m:
        raise ValueError(f"{text!r}: expected ADDR, ADDR:PORT/PROTO or [IPV6]:PORT/PROTO")
    addr_text = m.group("a6") or m.group("a4") or m.group("bare6")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError as err:
        raise ValueError(f"{text!r}: {addr_text!r} is not an IP address") from err
    port_text = m.group("p6") or m.group("p4")
    proto = m.group("r6") or m.group("r4")
    icmp = "icmp" if addr.version == 4 else "icmpv6"
    if port_text is None:
        return addr, None, proto or icmp
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} out of range")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"{text!r}: protocol {proto!r} with a port (tcp, udp or sctp)")
    return addr, port, proto


def find_guest(model: Model, name: str) -> tuple[Network, Guest]:
    """``GUEST`` or ``NETWORK/GUEST``; ValueError when unknown or ambiguous."""
    net_name, _, guest_name = name.rpartition("/")
    found = [(n, g) for n in model.networks for g in n.guests
             if g.name == guest_name and (not net_name or n.name == net_name)]
    if not found:
        raise ValueError(f"no guest {name!r} in any network")
    if len(found) > 1:
        raise ValueError(f"guest {name!r} is in several networks; write NETWORK/GUEST")
    return found[0]


def _bound(net: Network, guest: Guest, leases: Leases) -> list[ipaddress.IPv4Address]:
    ips = set(leases.get((net.name, guest.mac), ()))
    if guest.ip is not None:
        ips.add(guest.ip)
    return sorted(ips)


def _value_matches(
    v: Value, field: str, packet: Packet, net: Network, port_ips: Collection[Address],
    port_mac: str, rule: Rule, library: Library,
) -> bool | None:
    """Does packet field ``field`` match one value? None: unknown to explain (no match)."""
    actual: object
    if field in ("saddr", "daddr"):
        actual = packet.src if field == "saddr" else packet.dst
    elif field in ("sport", "dport"):
        actual = packet.sport if field == "sport" else packet.dport
    elif field == "ether_saddr":
        actual = packet.src_mac
    elif field == "ether_daddr":
        actual = packet.dst_mac
    elif field == "proto":
        actual = packet.proto
    elif field == "type":
        actual = packet.icmp_type
    elif field == "state":
        actual = packet.state
    elif field == "family":
        actual = "ipv4" if packet.family == "ip" else "ipv6"
    elif field == "ether_type":
        actual = packet.family
    else:
        return None
    if actual is None:
        return None
    if v.kind == "var":
        if v.text == "$MAC":
            return actual == port_mac
        if v.text == "$GUESTS":
            return actual in {g.mac for g in net.guests}
        if v.text in ("$IP", "$IP6"):
            return actual in port_ips
        if net.ipv4 is None:
            return False
        if v.text == "$NET":
            return isinstance(actual, ipaddress.IPv4Address) and actual in net.ipv4.network
        return actual == net.ipv4.gateway
    texts: tuple[str, ...] = (v.text,)
    if v.kind == "set":
        policy = library.policies[rule.policy]
        sdef = policy.set(v.text)
        texts = sdef.elements if sdef is not None else ()
    return any(_literal_matches(t, actual, field) for t in texts)


def _literal_matches(text: str, actual: object, field: str) -> bool:
    if isinstance(actual, ipaddress.IPv4Address | ipaddress.IPv6Address):
        try:
            return actual in ipaddress.ip_network(text, strict=False)
        except (ValueError, TypeError):
            return False
    if isinstance(actual, int) and field in ("sport", "dport"):
        low, _, high = text.partition("-")
        return int(low) <= actual <= int(high or low)
    return str(actual) == text


def _rule_matches(
    rule: Rule, packet: Packet, net: Network, port_ips: Collection[Address], port_mac: str,
    library: Library,
) -> bool:
    if packet.family not in rule_classes(rule):
        return False
    return all(_match(m, rule, packet, net, port_ips, port_mac, library) for m in rule.matches)


def _match(
    m: Match, rule: Rule, packet: Packet, net: Network, port_ips: Collection[Address],
    port_mac: str, library: Library,
) -> bool:
    results = [_value_matches(v, m.key, packet, net, port_ips, port_mac, rule, library)
               for v in m.values]
    if any(r is None for r in results):
        return False  # the field is not known for this packet: the rule cannot match
    hit = any(results)
    return not hit if m.negate else hit


def evaluate_flow(
    flow: Flow, packet: Packet, net: Network, port_ips: Collection[Address], port_mac: str,
    library: Library, stage: str,
) -> Step:
    for rule in flow.rules:
        if _rule_matches(rule, packet, net, port_ips, port_mac, library):
            return Step(stage, rule.action,
                        f"{rule.source} {rule.policy} {rule.direction} #{rule.index}")
    src = f"{flow.default_source} " if flow.default_source else ""
    return Step(stage, flow.default, f"{src}default {flow.default}".strip())


def explain(
    model: Model, library: Library, source: str, target: str, leases: Leases | None = None,
) -> Explanation:
    """Follow one packet from guest ``source`` to ``target`` (``ADDR[:PORT/PROTO]``)."""
    leases = leases or {}
    net, guest = find_guest(model, source)
    dst, port, proto = parse_target(target)
    src_ips = _bound(net, guest, leases)
    if dst.version == 4:
        # without a reservation or lease the guest has no address vnet would let through
        src: Address = src_ips[0] if src_ips else ipaddress.IPv4Address("0.0.0.0")
    else:
        src = ipaddress.IPv6Address("fe80::1")  # link-local: the only IPv6 source vnet knows
    receiver = _guest_with_address(model, dst, leases)
    icmp_type = "echo-request" if proto in ("icmp", "icmpv6") else None
    packet = Packet(src, dst, proto, port, guest.mac,
                    receiver[1].mac if receiver else None, icmp_type=icmp_type)
    steps: list[Step] = []
    names = (*net.policies, *guest.policies)
    if net.mode == Mode.OPEN or net.bridge is None:
        why = "mode open: vnet adds no rules" if net.mode == Mode.OPEN else "no bridge to filter"
        return Explanation(packet, (Step(f"network {net.name}", "accept", why),))
    if names:
        flow = library.profile(names).outbound
        steps.append(evaluate_flow(flow, packet, net, src_ips, guest.mac, library,
                                   f"{guest.name} outbound"))
    if steps and steps[-1].verdict != "accept":
        return Explanation(packet, tuple(steps))
    step = _forwarding(net, packet, receiver)
    if step.reason == HOST_ONLY and names:  # the sender's "host:" rules decide
        flow = library.profile(names).host
        step = evaluate_flow(flow, packet, net, src_ips, guest.mac, library,
                             f"{guest.name} to the host")
    steps.append(step)
    if steps[-1].verdict != "accept" or receiver is None:
        return Explanation(packet, tuple(steps))
    rnet, rguest = receiver
    rnames = (*rnet.policies, *rguest.policies)
    if rnames and rnet.mode != Mode.OPEN:
        rflow = library.profile(rnames).inbound
        steps.append(evaluate_flow(rflow, packet, rnet, _bound(rnet, rguest, leases),
                                   rguest.mac, library, f"{rguest.name} inbound"))
    return Explanation(packet, tuple(steps))


def _guest_with_address(
    model: Model, addr: Address, leases: Leases
) -> tuple[Network, Guest] | None:
    for net in model.networks:
        for guest in net.guests:
            if addr in _bound(net, guest, leases):
                return net, guest
    return None


def _forwarding(net: Network, packet: Packet, receiver: tuple[Network, Guest] | None) -> Step:
    stage = f"network {net.name} ({net.mode.value})"
    if net.ipv4 is not None and packet.dst == net.ipv4.gateway:
        allowed = (packet.proto == "udp" and packet.dport in HOST_UDP_PORTS) or (
            packet.proto == "tcp" and packet.dport in HOST_TCP_PORTS)
        if net.mode in L3_MODES and not allowed:
            return Step(stage, "drop", HOST_ONLY)
        return Step(stage, "accept", "to the host: DHCP, DNS or TFTP" if allowed else
                    "to the host (no vnet host rules in this mode)")
    same_net = receiver is not None and receiver[0].name == net.name
    if same_net:
        return Step(stage, "accept", "bridged within the network")
    if net.mode == Mode.ISOLATED:
        return Step(stage, "drop", "isolated: no forwarding beyond the bridge")
    if net.mode == Mode.NAT:
        return Step(stage, "accept", "nat: forwarded out of the uplink, masqueraded")
    if net.mode == Mode.ROUTE:
        return Step(stage, "accept", "route: forwarded without NAT")
    return Step(stage, "accept", f"mode {net.mode.value}: bridged to the uplink")


def explanation_dict(e: Explanation) -> Mapping[str, object]:
    p = e.packet
    return {
        "verdict": e.verdict,
        "decided_by": e.deciding.reason,
        "packet": {"src": str(p.src), "dst": str(p.dst), "proto": p.proto, "dport": p.dport,
                   "state": p.state},
        "steps": [{"stage": s.stage, "verdict": s.verdict, "reason": s.reason}
                  for s in e.steps],
    }
