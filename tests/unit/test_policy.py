"""The policy compiler, golden-tested: tests/unit/policy_cases/NAME.yaml -> NAME.json.

A case lists extra policy files (``policies: {FILE: TEXT}``), networks (a compact model), live
leases and optionally the br_netfilter ``handoff``. The expected file is the full nftables JSON
document, or ``{"problems": [...]}`` for cases that must be refused. ``VNET_REGENERATE=1``
rewrites the expected files for review (``git diff tests/unit/policy_cases``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from vnet.errors import ConfigError
from vnet.model import (
    BridgeSpec,
    Guest,
    Ipv4Spec,
    Mode,
    Model,
    Network,
    PortForward,
    UplinkSpec,
)
from vnet.policy import compile_ruleset, load_library
from vnet.policy.library import library_from_texts

CASES = Path(__file__).parent / "policy_cases"
REGENERATE = os.environ.get("VNET_REGENERATE") == "1"


def build_model(spec: list[dict[str, Any]]) -> Model:
    networks = []
    for n in spec:
        guests = tuple(
            Guest(
                name=g["name"], mac=g["mac"], ifname=g["ifname"],
                policies=tuple(g.get("policies", ())),
                ip=ipaddress.IPv4Address(g["ip"]) if "ip" in g else None,
            )
            for g in n.get("guests", ())
        )
        networks.append(Network(
            name=n["name"],
            mode=Mode(n["mode"]),
            source=f"{n['name']}.yaml",
            bridge=BridgeSpec(n["bridge"]) if "bridge" in n else None,
            uplink=UplinkSpec(ifname=n["uplink"]) if "uplink" in n else None,
            ipv4=Ipv4Spec(ipaddress.IPv4Interface(n["ipv4"])) if "ipv4" in n else None,
            policies=tuple(n.get("policies", ())),
            guests=guests,
            forwards=tuple(PortForward(**f) for f in n.get("forwards", ())),
        ))
    return Model(tuple(sorted(networks, key=lambda x: x.name)))


def run_case(path: Path) -> Any:
    case = yaml.safe_load(path.read_text())
    try:
        library = library_from_texts(case.get("policies", {}), base=load_library(None))
        model = build_model(case.get("networks", []))
        leases: dict[tuple[str, str], set[ipaddress.IPv4Address]] = {}
        for lease in case.get("leases", []):
            leases.setdefault((lease["network"], lease["mac"]), set()).add(
                ipaddress.IPv4Address(lease["ip"]))
        handoff = frozenset(case.get("handoff", ["ip", "ip6"]))
        return compile_ruleset(model, library, leases, handoff=handoff)
    except ConfigError as err:
        return {"problems": [str(p) for p in err.problems]}


@pytest.mark.parametrize("path", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    got = json.dumps(run_case(path), indent=1) + "\n"
    expected = path.with_suffix(".json")
    if REGENERATE or not expected.exists():
        expected.write_text(got)
    assert got == expected.read_text(), f"{path.name}: output changed; VNET_REGENERATE=1 to review"


def test_compile_is_deterministic() -> None:
    path = CASES / "web-server-nat.yaml"
    assert json.dumps(run_case(path)) == json.dumps(run_case(path))


def test_error_case_names_file_and_line() -> None:
    result = run_case(CASES / "error-unknown-key.yaml")
    problems = result["problems"]
    assert "broken.yaml:3: outbound.default: expected one of accept, drop, reject" in problems
    assert any(p.startswith("broken.yaml:5: outbound.rules[0].dport") and "99999" in p
               for p in problems)
    assert any(p.startswith("broken.yaml:6: outbound.rules[1]: missing 'action'")
               for p in problems)
    assert any(p.startswith("broken.yaml:7:") and "$HOME" in p for p in problems)
    assert any(p.startswith("broken.yaml:9:") and "never match" in p for p in problems)
    assert any(p.startswith("broken.yaml:16:") and "nd-router-advert" in p for p in problems)
    assert any(p.startswith("broken.yaml:19:") and "list of rules" in p for p in problems)


def test_hostile_names_stay_data() -> None:
    doc = run_case(CASES / "hostile-names.yaml")
    chains = {c["add"]["chain"]["name"] for c in doc["nftables"] if "chain" in c.get("add", {})}
    sets = {c["add"][k]["name"] for c in doc["nftables"] for k in ("set", "map")
            if k in c.get("add", {})}
    for name in chains | sets:
        assert name.replace("_", "").isalnum(), name
    elements = [c["add"]["element"] for c in doc["nftables"] if "element" in c.get("add", {})]
    ports = {e["elem"][0][0] for e in elements if e["name"] == "port_mark"} | {
        e["elem"][1][0] for e in elements if e["name"] == "port_mark" and len(e["elem"]) > 1}
    assert "abcdefghijklmno" in ports


def test_user_policy_overrides_builtin(tmp_path: Path) -> None:
    (tmp_path / "deny-all.yaml").write_text("inbound: {default: accept}\n")
    (tmp_path / "mine.yaml").write_text("include: [deny-all]\n")
    library = load_library(tmp_path)
    assert library.policies["deny-all"].inbound.default == "accept"
    assert library.policies["deny-all"].source.file == str(tmp_path / "deny-all.yaml")
    assert "mine" in library.names()


def test_load_library_reports_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("outbound:\n  default: nope\n")
    (tmp_path / "b.yaml").write_text("name: c\n")
    (tmp_path / "d.yaml").write_text("inbound: [\n")
    with pytest.raises(ConfigError) as info:
        load_library(tmp_path)
    text = str(info.value)
    assert f"{tmp_path}/a.yaml:2: outbound.default" in text
    assert f"{tmp_path}/b.yaml:1: name" in text
    assert f"{tmp_path}/d.yaml:" in text
    assert "not valid YAML" in text


def test_builtin_library_is_complete() -> None:
    names = load_library(None).names()
    assert names >= {
        "no-mac-spoofing", "no-ip-spoofing", "no-arp-spoofing", "allow-dhcp", "no-dhcp-server",
        "no-router-advertisements", "no-other-l2-traffic", "clean-traffic", "allow-all",
        "deny-all", "isolated-ports", "web-server",
    }


def test_profile_order_and_defaults() -> None:
    library = load_library(None)
    profile = library.profile(("clean-traffic", "web-server"))
    policies = [r.policy for r in profile.outbound.rules]
    # includes expand depth-first, each policy once, in the order written
    assert policies[0] == "no-mac-spoofing"
    assert policies[-1] == "web-server"
    assert policies.count("no-mac-spoofing") == 1
    assert profile.inbound.default == "drop"
    assert str(profile.inbound.default_source) == "vnet/policies/web-server.yaml:7"
    assert library.profile(("clean-traffic",)).inbound.default == "accept"
