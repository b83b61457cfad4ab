"""JSON Schema (draft 2020-12) of network definition files, for editors. Pure data.

It mirrors what ``vnet.config`` accepts; ``vnet validate`` remains the authority (it also checks
what a schema cannot: subnets, duplicates across guests, known policy names, kernel names).
"""

from __future__ import annotations

from typing import Any

_IFNAME = {"type": "string", "minLength": 1, "maxLength": 15, "pattern": "^[^/:\\s]+$"}
_MAC = {"type": "string", "pattern": "^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"}
_VLAN = {"type": "integer", "minimum": 1, "maximum": 4094}
_IPV4 = {"type": "string", "format": "ipv4"}
_DURATION = {"oneOf": [{"type": "integer", "minimum": 60}, {"type": "string", "pattern": "^\\d+[smhdw]?$"}]}
_POLICIES = {"type": "array", "items": {"type": "string"}}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = list(required)
    return out


def network_schema() -> dict[str, Any]:
    bond = _obj({
        "name": _IFNAME,
        "mode": {"enum": ["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
                          "balance-tlb", "balance-alb"]},
        "miimon": {"type": "integer", "minimum": 0},
        "members": {"type": "array", "items": _IFNAME, "minItems": 1},
    }, ("name", "members"))
    reservation = _obj({"mac": _MAC, "ip": _IPV4, "name": {"type": "string"},
                        "client-id": {"type": "string"}, "boot-file": {"type": "string"}}, ("ip",))
    dhcp = _obj({
        "ranges": {"type": "array", "items": {"type": "string", "pattern": "^[0-9.]+\\s*-\\s*[0-9.]+$"}},
        "lease-time": _DURATION,
        "reservations": {"type": "array", "items": reservation},
        "routes": {"type": "array", "items": _obj({"to": {"type": "string"}, "via": _IPV4}, ("to", "via"))},
        "ntp": {"type": "array", "items": _IPV4},
        "mtu": {"type": "integer", "minimum": 68, "maximum": 65535},
        "boot": _obj({"file": {"type": "string"}, "next-server": _IPV4,
                      "arch": {"type": "object", "patternProperties": {"^\\d+$": {"type": "string"}}},
                      "ipxe": {"type": "string"}, "no-pxedhcp": {"type": "boolean"}}),
        "probe": {"type": "boolean"},
        "max-pool-share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "rate-limit": {"type": "integer", "minimum": 1},
    })
    forwarder = {"oneOf": [{"type": "string"},
                           _obj({"address": {"type": "string"}, "domain": {"type": "string"}}, ("address",))]}
    dns = _obj({
        "domain": {"type": "string"}, "enabled": {"type": "boolean"}, "ttl": {"type": "integer", "minimum": 0},
        "forwarders": {"type": "array", "items": forwarder},
        "hosts": {"type": "array", "items": _obj({"name": {"type": "string"}, "ip": {"type": "string"},
                                                   "ttl": {"type": "integer"}}, ("name", "ip"))},
        "records": {"type": "array", "items": _obj({
            "name": {"type": "string"}, "type": {"enum": ["A", "AAAA", "CNAME", "TXT", "SRV"]},
            "value": {"type": ["string", "number"]}, "ttl": {"type": "integer"}}, ("name", "type", "value"))},
    })
    port_vlan = {"oneOf": [_VLAN, _obj({"access": _VLAN}),
                           _obj({"trunk": {"type": "array", "items": _VLAN}, "native": _VLAN})]}
    guest = _obj({
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
        "mac": _MAC,
        "port": {"enum": ["tap", "macvtap", "veth"]},
        "ifname": _IFNAME,
        "policies": _POLICIES,
        "vlan": port_vlan,
        "netns": {"type": "string"},
        "owner": {"type": "integer", "minimum": 0},
        "group": {"type": "integer", "minimum": 0},
        "multi-queue": {"type": "boolean"},
        "vnet-hdr": {"type": "boolean"},
    }, ("name", "mac"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vnet network definition",
        **_obj({
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"},
            "mode": {"enum": ["nat", "route", "isolated", "open", "bridge", "macvtap"]},
            "bridge": _obj({"name": _IFNAME, "stp": {"type": "boolean"},
                            "mtu": {"type": "integer", "minimum": 68, "maximum": 65535},
                            "mac": _MAC, "vlan-filtering": {"type": "boolean"}}),
            "uplink": {"oneOf": [_IFNAME, _obj({"name": _IFNAME, "bond": bond, "vlan": _VLAN})]},
            "macvtap": _obj({"mode": {"enum": ["vepa", "bridge", "private", "passthrough"]}}),
            "ipv4": _obj({"address": {"type": "string", "pattern": "^[0-9.]+/\\d+$"}, "dhcp": dhcp}, ("address",)),
            "dns": dns,
            "tftp": _obj({"root": {"type": "string", "pattern": "^/"},
                          "max-transfers-per-client": {"type": "integer", "minimum": 1}}, ("root",)),
            "policies": _POLICIES,
            "unknown-ports": {"enum": ["isolated", "allow"]},
            "guests": {"type": "array", "items": guest},
            "forwards": {"type": "array", "items": _obj({
                "proto": {"enum": ["tcp", "udp"]}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "to": {"type": "string", "pattern": "^[^:]+(:\\d+)?$"}}, ("port", "to"))},
        }, ("name", "mode")),
    }
