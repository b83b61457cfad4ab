"""Model + policy library (+ live leases) -> the nftables JSON document for vnet's own tables.

Pure and deterministic: the same inputs give byte-identical JSON. No I/O, no kernel access.

Two tables, both named ``vnet`` (docs/policies.md draws the packet path):

``bridge vnet`` (stateless, sees every frame of a guest port)
    Tags every frame from or to a guest port with the port's mark (``port_mark`` map:
    4-bit tag 0x7, 10-bit profile number, 18-bit port id) and jumps by the profile bits
    (``out``/``in`` verdict maps) to one chain per (network, profile): prerouting for frames
    from a guest, forward and output for frames to one. It evaluates the profile for the frames
    the IP stage does not see (ARP, other ether types, VLAN-tagged frames).

``inet vnet`` (stateful, via ``br_netfilter``)
    Evaluates the same profiles for IPv4/IPv6 packets, with conntrack: outbound in the
    prerouting hook (by the mark), inbound in the forward hook (by the mark for bridged packets,
    by ``ip daddr`` -> ``ip4_port`` for routed ones), and ``host:`` rules in the input hook.
    Then the network's forwarding mode (nat, route, isolated), DHCP/DNS/TFTP to the host and
    NAT (masquerade, port forwards).

Each frame is evaluated exactly once against the ordered rule list, by the stage that can see it,
so first-match order holds. Per-guest facts (port, MAC, addresses) live only in set and map
elements: adding a guest whose profile already exists, or a lease moving an address, is an
element change (``port_commands``, ``binding_commands``, ``element_changes``), not a new
ruleset.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vnet.errors import ConfigError, Problem
from vnet.model import Guest, Mode, Model, Network
from vnet.policy import nftjson as nj
from vnet.policy.ast import Match, Rule, SetDef, Value, rule_classes
from vnet.policy.library import Library, Profile

TABLE = "vnet"
# A port's mark: tag (4 bits) | profile (10 bits) | port id (18 bits). The profile bits pick
# the chains through a small verdict map, so per-port dispatch costs no per-port map entries.
PORT_MARK_TAG = 0x7000_0000
PORT_MARK_MASK = 0xF000_0000
PROFILE_SHIFT = 18
PROFILE_MASK = 0x0FFC_0000
PORT_ID_MASK = 0x0003_FFFF
MAX_PROFILES = PROFILE_MASK >> PROFILE_SHIFT
HANDOFF_ALL = frozenset({"ip", "ip6"})
HOST_UDP_PORTS = (53, 67, 69)  # DNS, DHCP, TFTP
HOST_TCP_PORTS = (53,)
LOG_RATE = nj.limit(10, "minute", 5)
L3_MODES = (Mode.NAT, Mode.ROUTE, Mode.ISOLATED)

Leases = Mapping[tuple[str, str], Collection[ipaddress.IPv4Address]]
"""Live DHCP leases: (network name, guest MAC) -> addresses currently leased to it."""


@dataclass(frozen=True)
class Port:
    """A filtered guest port and everything its elements are made of."""

    network: str
    guest: str
    ifname: str
    mac: str
    mark: int
    chains: tuple[str, str]  # (outbound chain, inbound chain); same names in both tables
    ips: tuple[ipaddress.IPv4Address, ...]
    guest_set: str | None = None  # the network's $GUESTS set, when a policy uses it


@dataclass
class Compiled:
    """A compiled ruleset: the commands of the full document plus what incremental updates and
    ``explain`` need to know about it."""

    commands: list[nj.Command]
    ports: dict[str, Port] = field(default_factory=dict)  # by ifname
    profiles: dict[tuple[str, tuple[str, ...]], tuple[str, str]] = field(default_factory=dict)
    profile_numbers: dict[tuple[str, tuple[str, ...]], int] = field(default_factory=dict)
    guest_sets: dict[str, str] = field(default_factory=dict)  # network -> $GUESTS set name
    port_ids: set[int] = field(default_factory=set)
    network_index: dict[str, int] = field(default_factory=dict)
    forwards: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    handoff: frozenset[str] = HANDOFF_ALL
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, nj.Json]:
        return nj.document(self.commands)

    def track(self, port: Port, *, present: bool = True) -> None:
        """Record that ``port`` was added (or removed) by element changes after compiling."""
        if present:
            self.ports[port.ifname] = port
            self.port_ids.add(port.mark & PORT_ID_MASK)
        elif self.ports.pop(port.ifname, None) is not None:
            self.port_ids.discard(port.mark & PORT_ID_MASK)


# --- naming --------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _token(text: str, limit: int = 24) -> str:
    return _UNSAFE.sub("_", text)[:limit]


def _truncate(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c != '"' else "_" for c in text)


def net_key(network: str) -> str:
    """A stable, nft-safe token for a network's per-network sets (``guests_KEY``,
    ``forwards_KEY``): its sanitised name plus 24 bits of CRC-32 against clashes."""
    return f"{_token(network, 20)}_{zlib.crc32(network.encode()) & 0xFFFFFF:06x}"


def port_id(network: str, ifname: str, used: Collection[int]) -> int:
    """A stable port id: 18 bits of CRC-32 of ``network/ifname``, probing past ids in use."""
    ident = zlib.crc32(f"{network}/{ifname}".encode()) & PORT_ID_MASK or 1
    while ident in used:
        ident = ident % PORT_ID_MASK + 1
    return ident


def port_mark(profile: int, ident: int) -> int:
    """The mark of a port: vnet's tag, its profile number (from 1) and its port id."""
    return PORT_MARK_TAG | profile << PROFILE_SHIFT | ident


# --- expressions for matches --------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    family: str  # "bridge" or "inet"
    direction: str  # "inbound" / "outbound"
    classes: frozenset[str]  # frame classes this stage evaluates
    network: Network
    set_names: Mapping[tuple[str, str], str]  # (policy, set) -> table set name

    @property
    def port_key(self) -> nj.Expr:
        if self.family == "inet":
            return nj.meta("mark")
        return nj.meta("iifname" if self.direction == "outbound" else "oifname")


class _Never(Exception):
    """The match can never be true in this network (e.g. $NET without IPv4)."""


class _Always(Exception):
    """The match is always true in this network (e.g. a negated $NET without IPv4)."""


_FIELDS: dict[str, tuple[str, str]] = {
    "ether_saddr": ("ether", "saddr"),
    "ether_daddr": ("ether", "daddr"),
    "vlan": ("vlan", "id"),
    "arp_op": ("arp", "operation"),
    "arp_sha": ("arp", "saddr ether"),
    "arp_spa": ("arp", "saddr ip"),
    "arp_tpa": ("arp", "daddr ip"),
}


def _literal_json(key: str, text: str) -> nj.Json:
    if key in ("sport", "dport", "set_port"):
        if "-" in text:
            low, high = text.split("-")
            return nj.range_(int(low), int(high))
        return int(text)
    if key == "vlan" or (key == "ether_type" and text.isdigit()):
        return int(text)
    if key in ("saddr", "daddr", "arp_spa", "arp_tpa", "set_addr") and "/" in text:
        addr, length = text.split("/")
        return nj.prefix(addr, int(length))
    return text


def _field(rule: Rule, m: Match, stage: _Stage, classes: frozenset[str]) -> nj.Expr:
    if m.key in _FIELDS:
        header, name = _FIELDS[m.key]
        return nj.payload(header, name)
    if m.key in ("saddr", "daddr"):
        family = "ip6" if classes <= {"ip6"} else "ip"
        return nj.payload(family, m.key)
    if m.key in ("sport", "dport"):
        proto = rule.match("proto")
        assert proto is not None
        if len(proto.values) == 1:
            return nj.payload(proto.values[0].text, m.key)
        return nj.payload("th", m.key)
    if m.key == "type":
        proto = rule.match("proto")
        assert proto is not None
        return nj.payload(proto.values[0].text, "type")
    if m.key == "proto":
        return nj.meta("l4proto")
    if m.key == "state":
        return nj.ct("state")
    raise AssertionError(m.key)


def _var_match(m: Match, value: Value, left: nj.Expr, stage: _Stage) -> nj.Stmt:
    op = "!=" if m.negate else "=="
    net = stage.network
    if value.text in ("$MAC", "$IP", "$IP6"):
        set_name = {"$MAC": "mac", "$IP": "ip4", "$IP6": "ip6"}[value.text]
        return nj.match(nj.concat(stage.port_key, left), nj.set_ref(set_name), op)
    if value.text == "$GUESTS":
        return nj.match(left, nj.set_ref(f"guests_{net_key(net.name)}"), op)
    if net.ipv4 is None:
        raise _Always if m.negate else _Never
    if value.text == "$NET":
        return nj.match(left, nj.prefix(str(net.ipv4.network.network_address),
                                        net.ipv4.network.prefixlen), op)
    return nj.match(left, str(net.ipv4.gateway), op)


def _match_stmts(rule: Rule, m: Match, stage: _Stage, classes: frozenset[str]) -> list[nj.Stmt]:
    if m.key == "family":
        if stage.family == "inet":
            return []  # expressed by the stage classes (meta nfproto) below
        types = [("ip" if v.text == "ipv4" else "ip6") for v in m.values]
        return [nj.match(nj.payload("ether", "type"), nj.anon_set(types),
                         "!=" if m.negate else "==")]
    if m.key == "ether_type":
        if stage.family == "inet":
            return []  # the inet stage only sees IPv4/IPv6; classes decide (meta nfproto)
        values = [_literal_json("ether_type", v.text) for v in m.values]
        return [nj.match(nj.payload("ether", "type"), nj.anon_set(values),
                         "!=" if m.negate else "==")]
    left = _field(rule, m, stage, classes)
    op = "!=" if m.negate else "=="
    literals = [_literal_json(m.key, v.text) for v in m.values if v.kind == "literal"]
    out: list[nj.Stmt] = [nj.match(left, nj.anon_set(literals), op)] if literals else []
    for value in m.values:  # several only when negated: none of them may match
        if value.kind == "literal":
            continue
        if value.kind == "set":
            out.append(nj.match(left, nj.set_ref(stage.set_names[(rule.policy, value.text)]), op))
            continue
        try:
            out.append(_var_match(m, value, left, stage))
        except _Always:
            continue
    return out


def _rule_stmts(rule: Rule, stage: _Stage) -> tuple[list[nj.Stmt], frozenset[str]] | None:
    """The match statements of ``rule`` in ``stage``; None when it cannot match there."""
    classes = rule_classes(rule) & stage.classes
    if not classes:
        return None
    if stage.family == "bridge" and rule.match("state") is not None:
        return None  # no conntrack in the bridge family (only reached without br_netfilter)
    stmts: list[nj.Stmt] = []
    if stage.family == "inet" and classes != stage.classes and classes:
        nfproto = sorted("ipv4" if c == "ip" else "ipv6" for c in classes)
        stmts.append(nj.match(nj.meta("nfproto"), nj.anon_set(nfproto)))
    order = ("ether_type", "family", "vlan", "ether_saddr", "ether_daddr", "arp_op", "arp_sha",
             "arp_spa", "arp_tpa", "saddr", "daddr", "proto", "type", "sport", "dport", "state")
    for key in order:
        m = rule.match(key)
        if m is None:
            continue
        implied = rule.match("sport") or rule.match("dport") or rule.match("type")
        if key == "proto" and implied and len(m.values) == 1 and not m.negate:
            continue  # implied by "tcp dport" / "icmp type"
        try:
            stmts.extend(_match_stmts(rule, m, stage, classes))
        except _Never:
            return None
    return stmts, classes


def _verdict(action: str, stage: _Stage) -> list[nj.Stmt]:
    if action == "accept":
        if stage.family == "inet" and stage.direction == "outbound":
            # the port id has done its job; don't leak it into routing or other tables
            return [nj.set_meta("mark", 0), nj.accept()]
        return [nj.accept()]
    if action == "reject" and stage.family == "inet":
        return [nj.reject()]
    return [nj.drop()]


def _comment(rule: Rule) -> str:
    text = f"{rule.source} {rule.policy} {rule.direction} #{rule.index}"
    if rule.comment:
        text += f": {rule.comment}"
    return _truncate(text, 127)


def _log_prefix(rule: Rule) -> str:
    short = {"inbound": "in", "outbound": "out"}.get(rule.direction, rule.direction)
    return _truncate(_printable(f"vnet {rule.policy} {short}#{rule.index} "), 127)


def _profile_rules(profile: Profile, stage: _Stage, chain: str) -> list[nj.Command]:
    fam = stage.family
    cmds: list[nj.Command] = []
    if fam == "bridge" and HANDOFF_ALL & stage.classes != HANDOFF_ALL:
        handed = sorted(HANDOFF_ALL - stage.classes)
        cmds.append(nj.add(nj.rule(fam, TABLE, chain, [
            nj.match(nj.payload("ether", "type"), nj.anon_set(handed)), nj.return_(),
        ], "IP packets are evaluated in table inet vnet (conntrack)")))
    flow = profile.flow(stage.direction)
    for rule in flow.rules:
        built = _rule_stmts(rule, stage)
        if built is None:
            continue
        stmts, _ = built
        comment = _comment(rule)
        if rule.log:
            cmds.append(nj.add(nj.rule(fam, TABLE, chain, [
                *stmts, LOG_RATE, nj.log(_log_prefix(rule))], comment)))
        tail: list[nj.Stmt] = []
        if rule.limit is not None:
            tail.append(nj.limit(rule.limit.count, rule.limit.per))
        if rule.counter:
            tail.append(nj.counter())
        cmds.append(nj.add(nj.rule(fam, TABLE, chain, [*stmts, *tail,
                                                        *_verdict(rule.action, stage)], comment)))
    src = flow.default_source
    where = f"{src} " if src else ""
    cmds.append(nj.add(nj.rule(fam, TABLE, chain, _verdict(flow.default, stage),
                               _truncate(f"{where}default {stage.direction} {flow.default}", 127))))
    return cmds


# --- the document -------------------------------------------------------------------------


_SET_TYPES = {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr", "mac": "ether_addr", "port": "inet_service"}


def _set_elements(sdef: SetDef) -> list[nj.Json]:
    key = {"ipv4": "set_addr", "ipv6": "set_addr", "mac": "mac", "port": "set_port"}[sdef.type]
    return [_literal_json(key, e) for e in sdef.elements]


def _base_chains(fam: str) -> list[nj.Command]:
    if fam == "bridge":
        return [
            nj.add(nj.chain(fam, TABLE, "prerouting", hook="prerouting", prio=-300)),
            nj.add(nj.chain(fam, TABLE, "forward", hook="forward", prio=-300)),
            nj.add(nj.chain(fam, TABLE, "output", hook="output", prio=-300)),
        ]
    return [
        nj.add(nj.chain(fam, TABLE, "guest_out", hook="prerouting", prio=0)),
        nj.add(nj.chain(fam, TABLE, "guest_in", hook="forward", prio=-1)),
        nj.add(nj.chain(fam, TABLE, "forward", hook="forward", prio=0)),
        nj.add(nj.chain(fam, TABLE, "host_in", hook="input", prio=0)),
        nj.add(nj.chain(fam, TABLE, "nat_pre", hook="prerouting", prio=-100, type_="nat")),
        nj.add(nj.chain(fam, TABLE, "nat_post", hook="postrouting", prio=100, type_="nat")),
    ]


def _tagged(op: str) -> nj.Stmt:
    return nj.match(nj.bitand(nj.meta("mark"), PORT_MARK_MASK), PORT_MARK_TAG, op)


def _profile_key() -> nj.Expr:
    return nj.bitand(nj.meta("mark"), PROFILE_MASK)


def _dispatch_rules(fam: str) -> list[nj.Command]:
    r = nj.rule
    if fam == "bridge":
        def tag_and_jump(chain: str, dev: str, vmap: str) -> nj.Json:
            # one rule: if the port is not in port_mark the lookup fails and the rule stops
            return r(fam, TABLE, chain, [
                nj.set_meta("mark", nj.map_lookup(nj.meta(dev), "@port_mark")),
                nj.vmap(_profile_key(), vmap)])

        unknown_in = nj.match(nj.meta("iifname"), nj.set_ref("unknown"))
        unknown_out = nj.match(nj.meta("oifname"), nj.set_ref("unknown"))
        dhcp_to_vnet = [nj.match(nj.payload("udp", "sport"), 68),
                        nj.match(nj.payload("udp", "dport"), 67)]
        return [nj.add(x) for x in (
            # a port no guest owns (enslaved by hand, or by libvirt without a hook): DHCP to
            # vnet and its answers only (unknown-ports: isolated)
            r(fam, TABLE, "prerouting", [unknown_in, *dhcp_to_vnet, nj.accept()],
              "unknown port: DHCP to vnet only"),
            r(fam, TABLE, "prerouting", [unknown_in, LOG_RATE,
                                         nj.log("vnet: unknown port "), nj.drop()]),
            r(fam, TABLE, "prerouting", [unknown_in, nj.drop()]),
            r(fam, TABLE, "prerouting", [
                nj.match(nj.meta("iifname"), nj.set_ref("ports")),
                nj.match(nj.concat(nj.meta("iifname"), nj.payload("ether", "saddr")),
                         nj.set_ref("port_macs"), "!="),
                nj.set_update("mac_mismatch", nj.meta("iifname")),
                LOG_RATE, nj.log("vnet: unexpected MAC ")], "a frame from a MAC the guest "
              "was not declared with: counted per port"),
            tag_and_jump("prerouting", "iifname", "@out"),
            r(fam, TABLE, "forward", [_tagged("=="), nj.set_meta("mark", 0)],
              "the source port's tag has done its job"),
            r(fam, TABLE, "forward", [unknown_out, nj.drop()]),
            tag_and_jump("forward", "oifname", "@in"),
            r(fam, TABLE, "output", [unknown_out, nj.match(nj.payload("udp", "sport"), 67),
                                     nj.accept()]),
            r(fam, TABLE, "output", [unknown_out, nj.drop()]),
            tag_and_jump("output", "oifname", "@in"),
        )]
    bridges = nj.set_ref("bridges")
    return [nj.add(x) for x in (
        r(fam, TABLE, "guest_out", [nj.match(nj.meta("iifname"), bridges), _tagged("=="),
                                    nj.vmap(_profile_key(), "@out")]),
        r(fam, TABLE, "guest_in", [nj.match(nj.meta("oifname"), bridges), _tagged("=="),
                                   nj.vmap(_profile_key(), "@in")], "bridged to a guest port"),
        r(fam, TABLE, "guest_in", [
            nj.match(nj.meta("oifname"), bridges), _tagged("!="),
            nj.set_meta("mark", nj.map_lookup(nj.payload("ip", "daddr"), "@ip4_port")),
            nj.vmap(_profile_key(), "@in"),
        ], "routed to a guest address"),
    )]


def _network_rules(net: Network, ni: int, compiled: Compiled) -> list[nj.Command]:
    """inet rules of one network's forwarding mode, host access and NAT."""
    fam = "inet"
    if net.bridge is None or net.mode not in L3_MODES:
        return []
    br = net.bridge.name
    uplink = net.uplink.device if net.uplink is not None else None
    iif = nj.match(nj.meta("iifname"), br)
    oif = nj.match(nj.meta("oifname"), br)
    cmt = _truncate(f"network {_printable(net.name)} ({net.mode.value})", 127)
    rules: list[tuple[str, list[nj.Stmt]]] = []
    fwd = "forward"
    if net.mode == Mode.NAT:
        rules.append((fwd, [iif, oif, nj.accept()]))
        if uplink:
            rules.append((fwd, [iif, nj.match(nj.meta("oifname"), uplink), nj.accept()]))
        else:
            rules.append((fwd, [iif, nj.accept()]))
        rules.append((fwd, [oif, nj.match(nj.ct("state"), nj.anon_set(["established",
                                                                        "related"])), nj.accept()]))
        rules.append((fwd, [oif, nj.match(nj.ct("status"), "dnat", "in"), nj.accept()]))
        rules.append((fwd, [iif, nj.drop()]))
        rules.append((fwd, [oif, nj.drop()]))
    elif net.mode == Mode.ROUTE:
        rules.append((fwd, [iif, nj.accept()]))
        rules.append((fwd, [oif, nj.accept()]))
    else:  # isolated
        rules.append((fwd, [iif, oif, nj.accept()]))
        rules.append((fwd, [iif, nj.drop()]))
        rules.append((fwd, [oif, nj.drop()]))
    est = nj.match(nj.ct("state"), nj.anon_set(["established", "related"]))
    rules.append(("host_in", [iif, est, nj.accept()]))
    rules.append(("host_in", [iif, nj.match(nj.payload("udp", "dport"),
                                            nj.anon_set(list(HOST_UDP_PORTS))), nj.accept()]))
    rules.append(("host_in", [iif, nj.match(nj.payload("tcp", "dport"),
                                            nj.anon_set(list(HOST_TCP_PORTS))), nj.accept()]))
    # anything else: the sender's policies decide ("host:" rules), by its bound address
    rules.append(("host_in", [
        iif, nj.set_meta("mark", nj.map_lookup(nj.payload("ip", "saddr"), "@ip4_port")),
        nj.vmap(_profile_key(), "@host")]))
    rules.append(("host_in", [iif, nj.drop()]))
    if net.mode == Mode.NAT and net.ipv4 is not None:
        prefix = nj.prefix(str(net.ipv4.network.network_address), net.ipv4.network.prefixlen)
        out = nj.match(nj.meta("oifname"), uplink) if uplink else nj.match(
            nj.meta("oifname"), br, "!=")
        rules.append(("nat_post", [nj.match(nj.payload("ip", "saddr"), prefix),
                                   nj.match(nj.payload("ip", "daddr"), prefix, "!="),
                                   out, nj.masquerade()]))
        for fw in net.forwards:
            rules.append(("nat_pre", [
                nj.match(nj.meta("iifname"), br, "!="),
                nj.match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
                nj.match(nj.meta("l4proto"), fw.proto),
                nj.match(nj.payload("th", "dport"), fw.port),
                nj.dnat("ip", nj.map_lookup(nj.concat(nj.meta("l4proto"),
                                                      nj.payload("th", "dport")),
                                            f"@forwards_{net_key(net.name)}"), fw.to_port),
            ]))
            compiled.forwards.setdefault(net.name, []).append((fw.proto, fw.port, fw.guest))
    return [nj.add(nj.rule(fam, TABLE, chain, stmts, cmt)) for chain, stmts in rules]


def _guest_ips(
    net: Network, mac: str, reserved: ipaddress.IPv4Address | None, leases: Leases
) -> tuple[ipaddress.IPv4Address, ...]:
    ips = set(leases.get((net.name, mac), ()))
    if reserved is not None:
        ips.add(reserved)
    return tuple(sorted(ips))


def policy_problems(model: Model, library: Library) -> list[Problem]:
    """Problems of the model's use of policies: unknown names, policies where vnet cannot
    filter (macvtap), port forwards to unknown guests. For ``vnet validate``."""
    problems: list[Problem] = []
    known = library.names()
    for net in model.networks:
        for name in net.policies:
            if name not in known:
                problems.append(Problem(net.source, 0, f"{net.name}.policies",
                                        f"unknown policy {name!r}"))
        for guest in net.guests:
            for name in guest.policies:
                if name not in known:
                    problems.append(Problem(net.source, 0, f"guests.{guest.name}.policies",
                                            f"unknown policy {name!r}"))
            if (guest.policies or net.policies) and net.bridge is None:
                problems.append(Problem(
                    net.source, 0, f"guests.{guest.name}.policies",
                    f"mode {net.mode.value} has no bridge: vnet cannot filter this guest "
                    "(see docs/policies.md, 'macvtap')"))
        for i, fw in enumerate(net.forwards):
            if net.guest(fw.guest) is None:
                problems.append(Problem(net.source, 0, f"forwards[{i}]",
                                        f"unknown guest {fw.guest!r}"))
            if net.mode != Mode.NAT:
                problems.append(Problem(net.source, 0, f"forwards[{i}]",
                                        f"port forwards need mode nat, not {net.mode.value}"))
    return problems


def compile_ruleset(
    model: Model,
    library: Library,
    leases: Leases | None = None,
    *,
    handoff: frozenset[str] = HANDOFF_ALL,
    unknown: Mapping[str, Collection[str]] | None = None,
) -> dict[str, nj.Json]:
    """The full nftables JSON document for vnet's tables (see ``compile_state``)."""
    return compile_state(model, library, leases, handoff=handoff, unknown=unknown).document()


def compile_state(
    model: Model,
    library: Library,
    leases: Leases | None = None,
    *,
    handoff: frozenset[str] = HANDOFF_ALL,
    unknown: Mapping[str, Collection[str]] | None = None,
) -> Compiled:
    """Compile everything. ``handoff``: the IP families ``br_netfilter`` passes to the inet
    table (``bridge-nf-call-iptables`` -> "ip", ``-ip6tables`` -> "ip6"); families not handed
    off are filtered statelessly in the bridge table, where rules with ``state`` are inactive.
    ``unknown``: network -> the ports on its bridge that are no guest's (seen in the kernel);
    networks with ``unknown-ports: isolated`` put them in the ``unknown`` set (DHCP to vnet
    only). Raises ConfigError for unknown policy names."""
    leases = leases or {}
    unknown = unknown or {}
    problems = [p for p in policy_problems(model, library)
                if "unknown policy" in p.message]
    if problems:
        raise ConfigError(problems)
    compiled = Compiled(commands=[], handoff=handoff)
    structure: dict[str, list[nj.Command]] = {"bridge": [], "inet": []}
    chains: dict[str, list[nj.Command]] = {"bridge": [], "inet": []}
    rules: dict[str, list[nj.Command]] = {"bridge": [], "inet": []}
    elements: dict[tuple[str, str], list[nj.Json]] = {}

    def elem(fam: str, name: str, value: nj.Json) -> None:
        elements.setdefault((fam, name), []).append(value)

    # Policy sets used by any profile: one named set per (policy, set) in each table.
    set_names: dict[tuple[str, str], str] = {}
    used_sets: dict[tuple[str, str], SetDef] = {}
    profiles: dict[tuple[str, ...], Profile] = {}
    for net in model.networks:
        if net.bridge is None or net.mode == Mode.OPEN:
            continue
        for guest in net.guests:
            names = (*net.policies, *guest.policies)
            if names:
                profiles[names] = library.profile(names)
    for profile in profiles.values():
        for sdef in profile.sets:
            used_sets[(sdef.policy, sdef.name)] = sdef
    taken: set[str] = set()
    for skey in sorted(used_sets):
        base = f"set_{_token(skey[0])}_{_token(skey[1])}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        set_names[skey] = name

    for fam in ("bridge", "inet"):
        t = structure[fam]
        t.append(nj.add(nj.table(fam, TABLE)))
        t.append(nj.delete(nj.table(fam, TABLE)))
        t.append(nj.add(nj.table(fam, TABLE)))
        key_t = "ifname" if fam == "bridge" else "mark"
        if fam == "bridge":
            t.append(nj.add(nj.set_(fam, TABLE, "port_mark", "ifname", data="mark")))
            # every guest port and its declared MAC; frames from another MAC are counted per
            # port in mac_mismatch (vnet status / doctor); ports no guest owns: unknown
            t.append(nj.add(nj.set_(fam, TABLE, "ports", "ifname")))
            t.append(nj.add(nj.set_(fam, TABLE, "port_macs", ["ifname", "ether_addr"])))
            t.append(nj.add(nj.set_(fam, TABLE, "mac_mismatch", "ifname", flags=["timeout"],
                                    size=65535, counters=True)))
            t.append(nj.add(nj.set_(fam, TABLE, "unknown", "ifname")))
        else:
            t.append(nj.add(nj.set_(fam, TABLE, "bridges", "ifname")))
            t.append(nj.add(nj.set_(fam, TABLE, "ip4_port", "ipv4_addr", data="mark")))
        # profile bits of the mark -> that profile's chains
        t.append(nj.add(nj.set_(fam, TABLE, "out", "mark", data="verdict")))
        t.append(nj.add(nj.set_(fam, TABLE, "in", "mark", data="verdict")))
        if fam == "inet":
            t.append(nj.add(nj.set_(fam, TABLE, "host", "mark", data="verdict")))
        t.append(nj.add(nj.set_(fam, TABLE, "mac", [key_t, "ether_addr"])))
        t.append(nj.add(nj.set_(fam, TABLE, "ip4", [key_t, "ipv4_addr"])))
        t.append(nj.add(nj.set_(fam, TABLE, "ip6", [key_t, "ipv6_addr"])))
        for skey, sdef in sorted(used_sets.items()):
            flags = ["interval"] if sdef.type != "mac" else []
            t.append(nj.add(nj.set_(fam, TABLE, set_names[skey], _SET_TYPES[sdef.type],
                                    flags=flags, elements=_set_elements(sdef),
                                    comment=_truncate(f"{sdef.source} @{sdef.name}", 127))))
        chains[fam].extend(_base_chains(fam))
        rules[fam].extend(_dispatch_rules(fam))

    bridge_classes = frozenset({"arp", "other"}) | (HANDOFF_ALL - handoff)
    used_ids: set[int] = set()
    bound_ips: set[ipaddress.IPv4Address] = set()
    # Networks are numbered among those that get rules, so leaving out open or bridgeless
    # networks beforehand (as ``vnet apply`` may) gives the same document.
    ni = -1
    for net in model.networks:
        if net.mode == Mode.OPEN:
            compiled.notes.append(f"network {net.name}: mode open, vnet adds no rules")
            continue
        if net.bridge is None:
            if net.policies or any(g.policies for g in net.guests):
                compiled.notes.append(f"network {net.name}: mode {net.mode.value} has no "
                                      "bridge; its guests are not filtered")
            continue
        ni += 1
        compiled.network_index[net.name] = ni
        elem("inet", "bridges", net.bridge.name)
        key = net_key(net.name)
        net_profiles = {(*net.policies, *g.policies) for g in net.guests}
        guest_set = None
        if any(_uses_variable(profiles[n], "$GUESTS") for n in net_profiles if n):
            guest_set = f"guests_{key}"
            compiled.guest_sets[net.name] = guest_set
            for fam in ("bridge", "inet"):
                structure[fam].append(nj.add(nj.set_(fam, TABLE, guest_set, "ether_addr")))
        if net.mode == Mode.NAT and net.forwards:
            structure["inet"].append(nj.add(nj.set_(
                "inet", TABLE, f"forwards_{key}", ["inet_proto", "inet_service"],
                data="ipv4_addr")))
        rules["inet"].extend(_network_rules(net, ni, compiled))
        if net.unknown_ports == "isolated":
            for ifname in sorted(unknown.get(net.name, ())):
                elem("bridge", "unknown", ifname)
        macs: set[str] = set()
        for guest in net.guests:
            for fam, name, value in guest_elements(guest):
                elem(fam, name, value)
            names = (*net.policies, *guest.policies)
            if not names:
                if guest_set is not None and guest.mac not in macs:
                    macs.add(guest.mac)
                    elem("bridge", guest_set, guest.mac)
                    elem("inet", guest_set, guest.mac)
                continue
            profile = profiles[names]
            pkey = (net.name, names)
            if pkey not in compiled.profiles:
                number = len(compiled.profiles) + 1
                if number > MAX_PROFILES:
                    raise ConfigError([Problem(net.source, 0, "policies", (
                        f"more than {MAX_PROFILES} different policy lists across networks"))])
                pi = sum(1 for k in compiled.profiles if k[0] == net.name)
                pair = (f"out_{ni}_{pi}", f"in_{ni}_{pi}")
                compiled.profiles[pkey] = pair
                compiled.profile_numbers[pkey] = number
                for fam in ("bridge", "inet"):
                    classes = bridge_classes if fam == "bridge" else handoff
                    for chain_name, direction in zip(pair, ("outbound", "inbound"), strict=True):
                        chains[fam].append(nj.add(nj.chain(fam, TABLE, chain_name)))
                        stage = _Stage(fam, direction, classes, net, set_names)
                        rules[fam].extend(_profile_rules(profile, stage, chain_name))
                        elem(fam, "out" if direction == "outbound" else "in",
                             [number << PROFILE_SHIFT, nj.verdict_jump(chain_name)])
                host_chain = f"host_{ni}_{pi}"
                chains["inet"].append(nj.add(nj.chain("inet", TABLE, host_chain)))
                # local delivery always passes the inet input hook; dispatched by IPv4 source
                stage = _Stage("inet", "host", frozenset({"ip"}), net, set_names)
                rules["inet"].extend(_profile_rules(profile, stage, host_chain))
                elem("inet", "host", [number << PROFILE_SHIFT, nj.verdict_jump(host_chain)])
            ips = tuple(ip for ip in _guest_ips(net, guest.mac, guest.ip, leases)
                        if ip not in bound_ips)
            bound_ips.update(ips)
            ident = port_id(net.name, guest.ifname, used_ids)
            used_ids.add(ident)
            compiled.port_ids.add(ident)
            mark = port_mark(compiled.profile_numbers[pkey], ident)
            port = Port(net.name, guest.name, guest.ifname, guest.mac, mark,
                        compiled.profiles[pkey], ips,
                        guest_set if guest.mac not in macs else None)
            macs.add(guest.mac)
            compiled.ports[guest.ifname] = port
            for fam, name, value in _port_elements(port):
                elem(fam, name, value)
        for proto, port_no, gname in compiled.forwards.get(net.name, []):
            target = net.guest(gname)
            if target is None:
                continue
            ips = _guest_ips(net, target.mac, target.ip, leases)
            if ips:
                elem("inet", f"forwards_{key}", [nj.concat(proto, port_no), str(ips[0])])

    out: list[nj.Command] = []
    for fam in ("bridge", "inet"):
        out.extend(structure[fam])
        out.extend(chains[fam])
        out.extend(rules[fam])
    # Elements in model order (deterministic); sorting 100,000 of them would cost more than
    # the kernel takes to load them.
    for (fam, name), values in sorted(elements.items()):
        out.append(nj.add(nj.element(fam, TABLE, name, values)))
    compiled.commands = out
    return compiled


def _uses_variable(profile: Profile, variable: str) -> bool:
    return any(
        v.kind == "var" and v.text == variable
        for flow in (profile.inbound, profile.outbound, profile.host)
        for rule in flow.rules
        for m in rule.matches
        for v in m.values
    )


def _port_elements(port: Port) -> Iterable[tuple[str, str, nj.Json]]:
    yield "bridge", "port_mark", [port.ifname, port.mark]
    yield "bridge", "mac", nj.concat(port.ifname, port.mac)
    yield "inet", "mac", nj.concat(port.mark, port.mac)
    if port.guest_set is not None:
        yield "bridge", port.guest_set, port.mac
        yield "inet", port.guest_set, port.mac
    yield from _ip_elements(port, port.ips)


def _ip_elements(
    port: Port, ips: Iterable[ipaddress.IPv4Address]
) -> Iterable[tuple[str, str, nj.Json]]:
    for ip in ips:
        yield "bridge", "ip4", nj.concat(port.ifname, str(ip))
        yield "inet", "ip4", nj.concat(port.mark, str(ip))
        yield "inet", "ip4_port", [str(ip), port.mark]


def _element_commands(
    verb: str, items: Iterable[tuple[str, str, nj.Json]]
) -> list[nj.Command]:
    grouped: dict[tuple[str, str], list[nj.Json]] = {}
    for fam, name, value in items:
        grouped.setdefault((fam, name), []).append(value)
    make = nj.add if verb == "add" else nj.delete
    return [make(nj.element(fam, TABLE, name, values))
            for (fam, name), values in sorted(grouped.items())]


def port_commands(port: Port, *, add: bool) -> list[nj.Command]:
    """Element changes that add (or remove) one guest port whose profile chains exist."""
    return _element_commands("add" if add else "delete", _port_elements(port))


def new_port(
    compiled: Compiled, network: Network, guest: Guest, ips: Sequence[ipaddress.IPv4Address] = ()
) -> Port | None:
    """The Port for ``guest`` joining ``network`` after ``compiled`` was built (O(1)); None when
    its profile has no chains yet (then a full ``compile_ruleset`` + replace is needed).
    Apply ``port_commands(port, add=True)`` and then ``compiled.track(port)``."""
    names = (*network.policies, *guest.policies)
    pkey = (network.name, names)
    pair = compiled.profiles.get(pkey)
    if pair is None:
        return None
    ident = port_id(network.name, guest.ifname, compiled.port_ids)
    mark = port_mark(compiled.profile_numbers[pkey], ident)
    all_ips = sorted({*ips, *([guest.ip] if guest.ip else [])})
    return Port(network.name, guest.name, guest.ifname, guest.mac, mark, pair, tuple(all_ips),
                compiled.guest_sets.get(network.name))


def binding_commands(
    port: Port,
    old: Iterable[ipaddress.IPv4Address],
    new: Iterable[ipaddress.IPv4Address],
) -> list[nj.Command]:
    """Element changes moving a port's ``$IP`` binding from ``old`` to ``new`` addresses."""
    old_set, new_set = set(old), set(new)
    gone = sorted(old_set - new_set)
    came = sorted(new_set - old_set)
    cmds = []
    if gone:
        cmds.extend(_element_commands("delete", _ip_elements(port, gone)))
    if came:
        cmds.extend(_element_commands("add", _ip_elements(port, came)))
    return cmds


def forward_commands(
    network: Network, guest: str, old: ipaddress.IPv4Address | None,
    new: ipaddress.IPv4Address | None,
) -> list[nj.Command]:
    """Element changes pointing ``network``'s port forwards to ``guest`` at its new address."""
    cmds: list[nj.Command] = []
    if network.mode != Mode.NAT or old == new:
        return cmds
    name = f"forwards_{net_key(network.name)}"
    for fw in network.forwards:
        if fw.guest != guest:
            continue
        key = nj.concat(fw.proto, fw.port)
        if old is not None:
            cmds.append(nj.delete(nj.element("inet", TABLE, name, [key])))
        if new is not None:
            cmds.append(nj.add(nj.element("inet", TABLE, name, [[key, str(new)]])))
    return cmds




def element_changes(old: nj.Json, new: nj.Json) -> list[nj.Command] | None:
    """The element changes that turn loaded document ``old`` into ``new``, or None when their
    tables, sets, chains or rules differ (then ``new`` must replace ``old``). For ``vnet apply``:
    adding or removing a guest whose policy list is already in use, or a changed reservation,
    becomes a few element changes instead of a new ruleset."""
    from vnet.policy.loaded import Loaded

    return Loaded.of(old).changes_to(new)


def guest_elements(guest: Guest) -> list[tuple[str, str, nj.Json]]:
    """The elements every guest port has, filtered or not (``ports``, ``port_macs``)."""
    return [("bridge", "ports", guest.ifname),
            ("bridge", "port_macs", nj.concat(guest.ifname, guest.mac))]


def guest_commands(guest: Guest, port: Port | None, *, add: bool) -> list[nj.Command]:
    """Element changes adding (or removing) one guest whose profile chains exist: its port
    entries, and its filter bindings when it is filtered (``port``, from ``new_port``)."""
    items = list(guest_elements(guest))
    if port is not None:
        items += list(_port_elements(port))
    return _element_commands("add" if add else "delete", items)
