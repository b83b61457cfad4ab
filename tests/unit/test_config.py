"""Definition files -> model: every problem reported as FILE:LINE: key.path: message (golden files)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VNET
from vnet.config import load_model, validate_paths
from vnet.errors import ConfigError
from vnet.model import Mode, PortKind, PortVlan

CASES = Path(__file__).parent / "config_cases"
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def problems_text(path: Path) -> str:
    lines = [str(p).replace(str(CASES) + "/", "") for p in validate_paths([path])]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_problems_match_golden(case: str) -> None:
    got = problems_text(CASES / f"{case}.yaml")
    golden = CASES / f"{case}.txt"
    if os.environ.get("VNET_REGENERATE"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_bad_file_lists_every_problem_with_line_and_key() -> None:
    text = problems_text(CASES / "bad-keys.yaml")
    for expected in (
        "bad-keys.yaml:1: name: network name 'Bad_Name'",
        "bad-keys.yaml:3: bridgee: unknown key (did you mean 'bridge'?)",
        "bad-keys.yaml:4: bridge.name: interface name 'this-name-is-far-too-long' is 25 bytes",
        "bad-keys.yaml:8: ipv4.dhcp.ranges[0]: range '10.10.0.100-10.10.0.50' ends before it starts",
        "ipv4.dhcp.ranges[1]: range start 10.10.1.1 is outside 10.10.0.0/24",
        "ipv4.dhcp.reservations[0].mac: '52:54:00:zz:00:10' is not a MAC address",
        "ipv4.dhcp.reservations[1]: reserved address 10.20.0.10 is outside 10.10.0.0/24",
        "policies[0]: unknown policy 'no-such-policy'",
        "guests[0].vlan: VLAN id 5000 is outside 1..4094",
        "guests[1]: duplicate guest name 'a'",
        "guests[1]: duplicate guest MAC '52:54:00:00:00:01'",
        "guests[2].mac: 01:00:5e:00:00:01 is a multicast MAC",
        "guests[2].ifname: interface name 'abcdefghijklmnop' is 16 bytes",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"


def test_mode_contradictions_are_named() -> None:
    text = problems_text(CASES / "bad-mode.yaml")
    assert "uplink: mode isolated does not forward to an uplink" in text
    assert "macvtap: mode isolated has no macvtap settings" in text
    assert "forwards: port forwards need mode nat, not isolated" in text
    assert "guests[1].netns: only a veth port can be moved into a namespace" in text


def test_yaml_syntax_error_has_a_line() -> None:
    assert problems_text(CASES / "bad-yaml.yaml").startswith("bad-yaml.yaml:3: invalid YAML")


def test_good_file_builds_the_model(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text((CASES / "good-route.yaml").read_text())
    net = load_model(tmp_path).networks[0]
    assert net.mode == Mode.ROUTE
    assert net.bridge is not None
    assert net.bridge.name == "vn-routed"
    assert net.uplink is not None
    assert net.uplink.device == "eth2"
    long_guest, ct = net.guests
    assert long_guest.ifname.startswith("vn")
    assert len(long_guest.ifname) == 12
    assert ct.ifname == "routed-ct1"
    assert ct.port == PortKind.VETH
    assert ct.netns == "ct1"
    assert net.ipv4 is not None
    assert net.ipv4.dhcp is not None
    boot = net.ipv4.dhcp.boot
    assert boot is not None
    assert boot.arch_files == ((7, "ipxe.efi"),)
    assert net.dns is not None
    assert [f.domain for f in net.dns.forwarders] == [None, "corp.test"]


def test_examples_validate_and_build() -> None:
    model = load_model(EXAMPLES)
    prod = model.network("prod")
    assert prod is not None
    assert prod.uplink is not None
    assert prod.uplink.device == "bond0.42"
    app1, fw1 = prod.guests
    assert app1.vlan == PortVlan(pvid=10)
    assert fw1.vlan == PortVlan(pvid=1, tagged=(10, 20, 30))
    lab = model.network("lab")
    assert lab is not None
    assert lab.guests[0].ip is not None
    assert str(lab.guests[0].ip) == "10.77.0.10"


def test_config_error_lists_all_problems(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nmode: nat\nipv4: {address: 10.1.0.1/24}\n")
    (tmp_path / "b.yaml").write_text("name: a\nmode: nat\nipv4: {address: 10.1.0.2/16}\n")
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path)
    text = str(err.value)
    assert "network 'a' is also defined in" in text


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([VNET, "validate", str(EXAMPLES)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([VNET, "validate", str(CASES / "bad-keys.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "bad-keys.yaml:3: bridgee: unknown key" in bad.stderr


def test_schema_accepts_the_examples_and_rejects_unknown_keys() -> None:
    import jsonschema
    import yaml

    from vnet.schema import network_schema

    schema = network_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError, match="bridgee"):
        jsonschema.validate({"name": "x", "mode": "nat", "bridgee": {}}, schema)


def test_validate_cli_checks_policy_files_too(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\ninbound:\n  default: maybe\n")
    res = subprocess.run([VNET, "--policy-dir", str(tmp_path), "validate", str(EXAMPLES)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{tmp_path}/bad.yaml:3: inbound.default:" in res.stderr
