"""Policy files -> a checked syntax tree where every rule knows its ``FILE:LINE``.

A policy file is YAML (see docs/policies.md). Parsing works on PyYAML's node graph so each
rule, set and key keeps the line it came from; every problem found in a file is collected and
raised once as ``ConfigError``. Pure: reads only the text it is given.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import yaml

from vnet.errors import ConfigError, Problem
from vnet.model import normalize_mac

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DIRECTIONS = ("inbound", "outbound", "host")  # host: from the guest to the host itself
ACTIONS = ("accept", "drop", "reject")
VARIABLES = ("$MAC", "$IP", "$IP6", "$NET", "$GATEWAY", "$GUESTS")
RATE_UNITS = ("second", "minute", "hour", "day")
SET_TYPES = ("ipv4", "ipv6", "mac", "port")

ETHER_TYPES = {"ip": "ip", "ipv4": "ip", "ip6": "ip6", "ipv6": "ip6", "arp": "arp", "vlan": "vlan"}
ARP_OPS = ("request", "reply")
PROTOS = ("tcp", "udp", "sctp", "icmp", "icmpv6")
PORT_PROTOS = ("tcp", "udp", "sctp")
CT_STATES = ("new", "established", "related", "invalid", "untracked")
ICMP_TYPES = (
    "echo-reply", "destination-unreachable", "source-quench", "redirect", "echo-request",
    "router-advertisement", "router-solicitation", "time-exceeded", "parameter-problem",
    "timestamp-request", "timestamp-reply", "info-request", "info-reply",
    "address-mask-request", "address-mask-reply",
)  # fmt: skip
ICMPV6_TYPES = (
    "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem",
    "echo-request", "echo-reply", "mld-listener-query", "mld-listener-report",
    "mld-listener-done", "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
    "nd-neighbor-advert", "nd-redirect", "router-renumbering", "mld2-listener-report",
)  # fmt: skip

# Rule keys -> kind of value they take.
MATCH_KEYS = {
    "ether_type": "ethertype",
    "ether_saddr": "mac",
    "ether_daddr": "mac",
    "vlan": "vlan",
    "arp_op": "arpop",
    "arp_sha": "mac",
    "arp_spa": "ipv4",
    "arp_tpa": "ipv4",
    "family": "family",
    "saddr": "addr",
    "daddr": "addr",
    "proto": "proto",
    "sport": "port",
    "dport": "port",
    "type": "icmptype",
    "state": "ctstate",
}
OTHER_KEYS = ("action", "log", "counter", "limit", "comment")


@dataclass(frozen=True, order=True)
class Source:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Value:
    """One operand of a match: a literal, a ``$VARIABLE`` or a ``@set`` reference."""

    kind: str  # "literal", "var", "set"
    text: str  # normalised literal, variable name ("$IP") or set name (no "@")
    set_type: str = ""  # for kind "set": one of SET_TYPES


@dataclass(frozen=True)
class Match:
    key: str  # a MATCH_KEYS key
    values: tuple[Value, ...]
    negate: bool = False


@dataclass(frozen=True)
class Rate:
    count: int
    per: str

    def __str__(self) -> str:
        return f"{self.count}/{self.per}"


@dataclass(frozen=True)
class Rule:
    policy: str
    direction: str
    index: int  # position in its policy's direction, from 1
    source: Source
    matches: tuple[Match, ...]
    action: str
    log: bool = False
    counter: bool = False
    limit: Rate | None = None
    comment: str = ""

    def match(self, key: str) -> Match | None:
        return next((m for m in self.matches if m.key == key), None)


@dataclass(frozen=True)
class SetDef:
    policy: str
    name: str
    type: str  # one of SET_TYPES
    elements: tuple[str, ...]
    source: Source


@dataclass(frozen=True)
class Direction:
    default: str | None = None
    default_source: Source | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Policy:
    name: str
    source: Source
    description: str = ""
    includes: tuple[tuple[str, Source], ...] = ()
    sets: tuple[SetDef, ...] = ()
    inbound: Direction = field(default_factory=Direction)
    outbound: Direction = field(default_factory=Direction)
    host: Direction = field(default_factory=Direction)

    def direction(self, name: str) -> Direction:
        return {"inbound": self.inbound, "outbound": self.outbound, "host": self.host}[name]

    def set(self, name: str) -> SetDef | None:
        return next((s for s in self.sets if s.name == name), None)


class _Collector:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(self.file, line, path, message))

    def src(self, node: yaml.Node) -> Source:
        return Source(self.file, node.start_mark.line + 1)


def _scalar(node: yaml.Node) -> object:
    """The Python value of a scalar node (YAML 1.1 rules, as PyYAML's safe loader)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _mapping(node: yaml.Node, c: _Collector, path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        c.add(node, path, "expected a mapping")
        return {}
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        key = _scalar(k) if isinstance(k, yaml.ScalarNode) else None
        if not isinstance(key, str):
            c.add(k, path, "keys must be strings")
            continue
        if key in out:
            c.add(k, f"{path}.{key}" if path else key, "duplicate key")
            continue
        out[key] = (k, v)
    return out


def _seq(node: yaml.Node) -> list[yaml.Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]


def parse_policy(text: str, file: str, default_name: str) -> Policy:
    """Parse one policy file; raises ConfigError with every problem found."""
    c = _Collector(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError([Problem(file, line, "", f"not valid YAML: {err}")]) from err
    if root is None:
        raise ConfigError([Problem(file, 1, "", "empty policy file")])
    top = _mapping(root, c, "")
    known = ("name", "description", "include", "sets", *DIRECTIONS)
    for key, (knode, _) in top.items():
        if key not in known:
            c.add(knode, key, f"unknown key (expected one of {', '.join(known)})")
    name = default_name
    if "name" in top:
        node = top["name"][1]
        value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str) or not NAME_RE.match(value):
            c.add(node, "name", "policy names are 1-63 letters, digits, '_', '.', '-'")
        else:
            name = value
    if not NAME_RE.match(name):
        c.add(root, "name", f"{name!r} is not a valid policy name (letters, digits, _ . -)")
    description = ""
    if "description" in top:
        d = _scalar(top["description"][1]) if isinstance(top["description"][1], yaml.ScalarNode) else None
        if not isinstance(d, str):
            c.add(top["description"][1], "description", "expected a string")
        else:
            description = d
    includes: list[tuple[str, Source]] = []
    if "include" in top:
        for i, inode in enumerate(_seq(top["include"][1])):
            v = _scalar(inode) if isinstance(inode, yaml.ScalarNode) else None
            if not isinstance(v, str) or not NAME_RE.match(v):
                c.add(inode, f"include[{i}]", "expected a policy name")
            else:
                includes.append((v, c.src(inode)))
    sets: list[SetDef] = []
    if "sets" in top:
        for sname, (knode, snode) in _mapping(top["sets"][1], c, "sets").items():
            sdef = _parse_set(name, sname, knode, snode, c)
            if sdef is not None:
                sets.append(sdef)
    set_types = {s.name: s.type for s in sets}
    directions: dict[str, Direction] = {}
    for dname in DIRECTIONS:
        if dname in top:
            directions[dname] = _parse_direction(name, dname, top[dname][1], set_types, c)
        else:
            directions[dname] = Direction()
    if c.problems:
        raise ConfigError(c.problems)
    return Policy(
        name=name,
        source=Source(file, 1),
        description=description,
        includes=tuple(includes),
        sets=tuple(sets),
        inbound=directions["inbound"],
        outbound=directions["outbound"],
        host=directions["host"],
    )


def _parse_set(
    policy: str, name: str, knode: yaml.Node, node: yaml.Node, c: _Collector
) -> SetDef | None:
    path = f"sets.{name}"
    if not NAME_RE.match(name):
        c.add(knode, path, "set names are letters, digits, '_', '.', '-'")
        return None
    body = _mapping(node, c, path)
    for key, (k, _) in body.items():
        if key not in ("type", "elements"):
            c.add(k, f"{path}.{key}", "unknown key (expected type, elements)")
    if "type" not in body:
        c.add(node, path, f"missing 'type' (one of {', '.join(SET_TYPES)})")
        return None
    stype = _scalar(body["type"][1])
    if stype not in SET_TYPES:
        c.add(body["type"][1], f"{path}.type", f"unknown set type {stype!r} (one of {', '.join(SET_TYPES)})")
        return None
    assert isinstance(stype, str)
    elements: list[str] = []
    if "elements" in body:
        enode = body["elements"][1]
        if not isinstance(enode, yaml.SequenceNode):
            c.add(enode, f"{path}.elements", "expected a list")
        else:
            for i, item in enumerate(enode.value):
                raw = _scalar(item) if isinstance(item, yaml.ScalarNode) else None
                try:
                    elements.append(_literal(stype, raw))
                except ValueError as err:
                    c.add(item, f"{path}.elements[{i}]", str(err))
    return SetDef(policy, name, stype, tuple(sorted(set(elements), key=_sort_key)), c.src(knode))


def _sort_key(text: str) -> tuple[int, str]:
    return (len(text), text)


def _parse_direction(
    policy: str, dname: str, node: yaml.Node, set_types: dict[str, str], c: _Collector
) -> Direction:
    body = _mapping(node, c, dname)
    for key, (k, _) in body.items():
        if key not in ("default", "rules"):
            c.add(k, f"{dname}.{key}", "unknown key (expected default, rules)")
    default = None
    default_source = None
    if "default" in body:
        dnode = body["default"][1]
        value = _scalar(dnode) if isinstance(dnode, yaml.ScalarNode) else None
        if value not in ACTIONS:
            c.add(dnode, f"{dname}.default", f"expected one of {', '.join(ACTIONS)}")
        else:
            assert isinstance(value, str)
            default, default_source = value, c.src(dnode)
    rules: list[Rule] = []
    if "rules" in body:
        rnode = body["rules"][1]
        if not isinstance(rnode, yaml.SequenceNode):
            c.add(rnode, f"{dname}.rules", "expected a list of rules")
        else:
            for i, item in enumerate(rnode.value):
                rule = _parse_rule(policy, dname, i + 1, item, set_types, c)
                if rule is not None:
                    rules.append(rule)
    return Direction(default, default_source, tuple(rules))


def _parse_rule(
    policy: str, dname: str, index: int, node: yaml.Node, set_types: dict[str, str], c: _Collector
) -> Rule | None:
    path = f"{dname}.rules[{index - 1}]"
    body = _mapping(node, c, path)
    before = len(c.problems)
    matches: list[Match] = []
    action = None
    log = counter = False
    limit = None
    comment = ""
    for key, (knode, vnode) in body.items():
        kpath = f"{path}.{key}"
        if key == "action":
            value = _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if value not in ACTIONS:
                c.add(vnode, kpath, f"expected one of {', '.join(ACTIONS)}")
            else:
                assert isinstance(value, str)
                action = value
        elif key in ("log", "counter"):
            value = _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if not isinstance(value, bool):
                c.add(vnode, kpath, "expected true or false")
            elif key == "log":
                log = value
            else:
                counter = value
        elif key == "limit":
            value = _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            limit = _parse_rate(value)
            if limit is None:
                c.add(vnode, kpath, "expected a rate like 10/second (second, minute, hour, day)")
        elif key == "comment":
            value = _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if not isinstance(value, str):
                c.add(vnode, kpath, "expected a string")
            else:
                comment = value
        elif key in MATCH_KEYS:
            m = _parse_match(key, vnode, set_types, c, kpath)
            if m is not None:
                matches.append(m)
        else:
            c.add(knode, kpath, "unknown key (matches: " + ", ".join(MATCH_KEYS)
                  + "; also: " + ", ".join(OTHER_KEYS) + ")")
    if action is None and "action" not in body:
        c.add(node, path, "missing 'action' (accept, drop or reject)")
    if len(c.problems) > before or action is None:
        return None
    rule = Rule(policy, dname, index, c.src(node), tuple(matches), action, log, counter, limit,
                comment)
    for problem in check_rule(rule):
        c.add(node, path, problem)
    return rule


def _parse_rate(value: object) -> Rate | None:
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|day)\s*", value)
    if not m or int(m.group(1)) < 1:
        return None
    return Rate(int(m.group(1)), m.group(2))


def _parse_match(
    key: str, node: yaml.Node, set_types: dict[str, str], c: _Collector, path: str
) -> Match | None:
    negate = False
    if isinstance(node, yaml.MappingNode):
        body = _mapping(node, c, path)
        if set(body) != {"not"}:
            c.add(node, path, "a mapping here must be {not: VALUE-OR-LIST}")
            return None
        negate = True
        node = body["not"][1]
    items = _seq(node)
    if not items:
        c.add(node, path, "empty list: the rule could never match (use a named set for lists "
              "that may be empty)")
        return None
    kind = MATCH_KEYS[key]
    values: list[Value] = []
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]" if isinstance(node, yaml.SequenceNode) else path
        raw = _scalar(item) if isinstance(item, yaml.ScalarNode) else None
        if raw is None and not isinstance(item, yaml.ScalarNode):
            c.add(item, ipath, "expected a scalar value")
            continue
        if isinstance(raw, str) and raw.startswith("!"):
            if isinstance(node, yaml.SequenceNode) or negate:
                c.add(item, ipath, "'!' negates a single value; negate a list with {not: [...]}")
                continue
            negate = True
            raw = raw[1:].strip()
        try:
            values.append(_value(kind, raw, set_types))
        except ValueError as err:
            c.add(item, ipath, str(err))
    if len(values) != len(items):
        return None
    if not negate and len(values) > 1 and any(v.kind != "literal" for v in values):
        c.add(node, path, "a list may not mix variables or @sets with other values (it would "
              "be a union nftables cannot look up in one rule); split it into two rules")
        return None
    return Match(key, tuple(values), negate)


_VAR_KINDS = {
    "$MAC": ("mac",),
    "$GUESTS": ("mac",),
    "$IP": ("ipv4", "addr"),
    "$GATEWAY": ("ipv4", "addr"),
    "$NET": ("ipv4", "addr"),
    "$IP6": ("addr",),
}
_SET_KINDS = {"ipv4": ("ipv4", "addr"), "ipv6": ("addr",), "mac": ("mac",), "port": ("port",)}


def _value(kind: str, raw: object, set_types: dict[str, str]) -> Value:
    if isinstance(raw, str) and raw.startswith("$"):
        if raw not in VARIABLES:
            raise ValueError(f"unknown variable {raw} (known: {', '.join(VARIABLES)})")
        if kind not in _VAR_KINDS[raw]:
            raise ValueError(f"{raw} cannot be used here")
        return Value("var", raw)
    if isinstance(raw, str) and raw.startswith("@"):
        name = raw[1:]
        if name not in set_types:
            raise ValueError(f"unknown set @{name} (define it under 'sets:' in this policy)")
        if kind not in _SET_KINDS[set_types[name]]:
            raise ValueError(f"set @{name} holds {set_types[name]} values, not usable here")
        return Value("set", name, set_types[name])
    return Value("literal", _literal(kind, raw))


def _literal(kind: str, raw: object) -> str:
    """Normalise a literal of ``kind``; ValueError with a user-facing message."""
    if kind == "mac":
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a MAC address")
        return normalize_mac(raw)
    if kind in ("ipv4", "ipv6", "addr"):
        text = str(raw)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as err:
            raise ValueError(f"{text!r} is not an IP address or prefix") from err
        if "/" in text and net.network_address != ipaddress.ip_interface(text).ip:
            raise ValueError(f"{text!r} has host bits set (did you mean {net}?)")
        if kind == "ipv4" and net.version != 4:
            raise ValueError(f"{text!r} is not an IPv4 address")
        if kind == "ipv6" and net.version != 6:
            raise ValueError(f"{text!r} is not an IPv6 address")
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    if kind == "port":
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a port")
        if isinstance(raw, int):
            low = high = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", raw):
            a, b = raw.split("-")
            low, high = int(a), int(b)
        elif isinstance(raw, str) and raw.strip().isdigit():
            low = high = int(raw)
        else:
            raise ValueError(f"{raw!r} is not a port or a range like 1000-2000")
        if not (0 <= low <= high <= 65535):
            raise ValueError(f"{raw!r}: ports are 0-65535, low-high with low <= high")
        return str(low) if low == high else f"{low}-{high}"
    if kind == "vlan":
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 4094:
            raise ValueError(f"{raw!r} is not a VLAN id (1-4094)")
        return str(raw)
    if kind == "ethertype":
        if isinstance(raw, int) and not isinstance(raw, bool) and 0x600 <= raw <= 0xFFFF:
            return str(raw)
        if isinstance(raw, str) and raw.lower() in ETHER_TYPES:
            return ETHER_TYPES[raw.lower()]
        if isinstance(raw, str) and re.fullmatch(r"0x[0-9a-fA-F]{3,4}", raw):
            value = int(raw, 16)
            if value >= 0x600:
                return str(value)
        raise ValueError(f"{raw!r} is not an ether type (ip, ip6, arp, vlan or 0x0600-0xffff)")
    choices = {
        "arpop": ARP_OPS,
        "family": ("ipv4", "ipv6"),
        "proto": PROTOS,
        "ctstate": CT_STATES,
        "icmptype": tuple(sorted(set(ICMP_TYPES) | set(ICMPV6_TYPES))),
    }[kind]
    if raw not in choices:
        raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
    assert isinstance(raw, str)
    return raw


# Frame classes a rule can apply to. "other": any non-IP, non-ARP frame (incl. VLAN-tagged).
ALL_CLASSES = frozenset({"ip", "ip6", "arp", "other"})


def _addr_classes(values: tuple[Value, ...]) -> set[str]:
    out: set[str] = set()
    for v in values:
        if v.kind == "var":
            out.add("ip6" if v.text == "$IP6" else "ip")
        elif v.kind == "set":
            out.add("ip6" if v.set_type == "ipv6" else "ip")
        else:
            out.add("ip6" if ":" in v.text else "ip")
    return out


def rule_classes(rule: Rule) -> frozenset[str]:
    """The frame classes (ip, ip6, arp, other) this rule can possibly match."""
    classes = set(ALL_CLASSES)
    for m in rule.matches:
        if m.key == "ether_type":
            named = {"ip": "ip", "ip6": "ip6", "arp": "arp"}
            these = {named.get(v.text, "other") for v in m.values}
            if m.negate:
                # "not ip" removes ip; "not 0x88cc" cannot remove the whole "other" class
                these = {c for c in these if c != "other"}
                classes -= these
            else:
                classes &= these
        elif m.key.startswith("arp_"):
            classes &= {"arp"}
        elif m.key == "vlan":
            classes &= {"other"}
        elif m.key == "family":
            families = {"ip" if v.text == "ipv4" else "ip6" for v in m.values}
            classes &= (ALL_CLASSES - families) if m.negate else families
        elif m.key in ("saddr", "daddr"):
            classes &= _addr_classes(m.values)
        elif m.key == "proto":
            if m.negate:
                classes &= {"ip", "ip6"}
            else:
                fams: set[str] = set()
                for v in m.values:
                    fams |= {"icmp": {"ip"}, "icmpv6": {"ip6"}}.get(v.text, {"ip", "ip6"})
                classes &= fams
        elif m.key in ("sport", "dport", "type", "state"):
            classes &= {"ip", "ip6"}
    return frozenset(classes)


def check_rule(rule: Rule) -> list[str]:
    """Cross-key problems of one rule (messages only; the caller adds FILE:LINE)."""
    problems: list[str] = []
    proto = rule.match("proto")
    protos = {v.text for v in proto.values} if proto else set()
    for key in ("sport", "dport"):
        if rule.match(key) is not None and (
            proto is None or proto.negate or not protos <= set(PORT_PROTOS)
        ):
            problems.append(f"'{key}' needs 'proto' of tcp, udp or sctp")
    icmp = rule.match("type")
    if icmp is not None:
        if proto is None or proto.negate or len(protos) != 1 or not protos <= {"icmp", "icmpv6"}:
            problems.append("'type' needs 'proto: icmp' or 'proto: icmpv6'")
        else:
            known = ICMP_TYPES if protos == {"icmp"} else ICMPV6_TYPES
            for v in icmp.values:
                if v.text not in known:
                    problems.append(f"{v.text!r} is not a type of {next(iter(protos))}")
    for key in ("saddr", "daddr"):
        m = rule.match(key)
        if m is not None and len(_addr_classes(m.values)) > 1:
            problems.append(f"'{key}' mixes IPv4 and IPv6 values; write one rule per family")
    if not rule_classes(rule):
        problems.append("this rule can never match (its matches exclude each other, e.g. ARP "
                        "fields with an IP protocol)")
    if rule.action == "reject" and rule_classes(rule) <= {"arp", "other"}:
        problems.append("'reject' needs IP traffic to answer; use 'drop' for ARP or other L2")
    return problems
