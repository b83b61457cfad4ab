"""Valid policies compile to documents the kernel accepts: hypothesis generates coherent rules
of every layer (L2, VLAN, ARP, IPv4, ICMP, IPv6) in all three directions, and the kernel checks
each compiled document, in all three br_netfilter hand-off variants, in a namespace of this
test."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import NetnsFactory
from tests.priv.test_filter import in_netns
from vnet.model import BridgeSpec, Guest, Ipv4Spec, Mode, Model, Network
from vnet.policy import compile_ruleset, load_library
from vnet.policy.library import library_from_texts

pytestmark = pytest.mark.priv

Strategy = st.SearchStrategy[dict[str, object]]


def rules_of(required: dict[str, list[object]], optional: dict[str, list[object]]) -> Strategy:
    return st.fixed_dictionaries(
        {"action": st.sampled_from(["accept", "drop"]),
         **{k: st.sampled_from(v) for k, v in required.items()}},
        optional={**{k: st.sampled_from(v) for k, v in optional.items()},
                  "log": st.booleans(), "counter": st.booleans(),
                  "limit": st.sampled_from(["5/second", "100/minute"])},
    )


L2 = rules_of({}, {
    "ether_type": ["ip", "ip6", "arp", "0x88cc", ["ip", "arp"], {"not": ["ip", "ip6", "arp"]}],
    "ether_saddr": ["$MAC", "!$MAC", "$GUESTS", "02:00:00:00:00:01", "@macs"],
    "ether_daddr": ["!$GUESTS", "ff:ff:ff:ff:ff:ff"],
})
VLAN = rules_of({"vlan": [10, [10, 20]]}, {"ether_saddr": ["!$MAC"]})
ARP = rules_of({"arp_op": ["request", "reply", {"not": ["request"]}]}, {
    "arp_sha": ["!$MAC", "@macs"],
    "arp_spa": ["!$IP", "$NET", "0.0.0.0", "@v4"],
    "arp_tpa": ["$GATEWAY"],
    "ether_saddr": ["!$MAC"],
})
IP4 = rules_of({"proto": ["tcp", "udp", "sctp", ["tcp", "udp"]]}, {
    "saddr": ["$IP", "!$IP", "10.0.0.0/8", "@v4", "$GATEWAY", ["10.1.0.0/16", "10.2.0.1"]],
    "daddr": ["!$NET", "192.0.2.1"],
    "dport": [22, "1000-2000", [80, 443], "@ports", "!25"],
    "sport": [68, "!53"],
    "state": ["new", ["established", "related"], "!invalid"],
    "ether_saddr": ["!$MAC"],
}).map(lambda r: {**r, "action": "reject"} if r.get("state") == "new" else r)
ICMP = rules_of({"proto": ["icmp"]}, {
    "type": ["echo-request", ["echo-request", "echo-reply"]], "saddr": ["!$IP", "@v4"],
})
IP6 = rules_of({"family": ["ipv6"]}, {
    "saddr": ["fe80::/10", "@v6", {"not": ["$IP6", "fe80::/10", "::"]}, "$IP6"],
    "daddr": ["2001:db8::/32"],
    "proto": ["icmpv6"],
    "state": [["established", "related"]],
})
ICMP6 = rules_of({"proto": ["icmpv6"]}, {"type": ["nd-router-advert",
                                                  ["nd-neighbor-solicit", "echo-request"]]})
rule = st.one_of(L2, VLAN, ARP, IP4, ICMP, IP6, ICMP6)
policy = st.fixed_dictionaries({
    "sets": st.just({"v4": {"type": "ipv4", "elements": ["198.51.100.0/24"]},
                     "v6": {"type": "ipv6", "elements": []},
                     "macs": {"type": "mac", "elements": ["02:00:00:00:00:02"]},
                     "ports": {"type": "port", "elements": [8080, "9000-9100"]}}),
    "inbound": st.fixed_dictionaries({"default": st.sampled_from(["accept", "drop"]),
                                      "rules": st.lists(rule, max_size=6)}),
    "outbound": st.fixed_dictionaries({"rules": st.lists(rule, max_size=6)}),
    "host": st.fixed_dictionaries({"default": st.sampled_from(["accept", "drop"]),
                                   "rules": st.lists(st.one_of(IP4, ICMP, L2), max_size=4)}),
})

MODEL = Model((Network(
    name="fz", mode=Mode.NAT, bridge=BridgeSpec("vn-fz"),
    ipv4=Ipv4Spec(ipaddress.IPv4Interface("10.9.0.1/24")), policies=("clean-traffic",),
    guests=(Guest("g", "52:54:00:00:09:01", "fz-g", policies=("fuzz",),
                  ip=ipaddress.IPv4Address("10.9.0.5")),)),))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=policy, handoff=st.sampled_from([("ip", "ip6"), ("ip6",), ()]))
def test_accepted_policies_compile_to_loadable_rules(
    netns_factory: NetnsFactory, body: dict[str, object], handoff: tuple[str, ...]
) -> None:
    from vnet.host import nft

    if not netns_factory.created:
        netns_factory("z")
    ns = netns_factory.created[0]
    # every generated rule is valid: the parser must accept it, the kernel must load it
    library = library_from_texts({"fuzz.yaml": yaml.safe_dump(body)}, load_library(None))
    doc = compile_ruleset(MODEL, library, handoff=frozenset(handoff))
    in_netns(ns, nft.check, doc)
