"""``vnet policy compile`` / ``explain`` from definition files, as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import VNET

LAB = """\
name: lab
mode: nat
bridge: {name: vn-lab}
ipv4:
  address: 10.77.0.1/24
  dhcp:
    ranges: [10.77.0.100-10.77.0.199]
    reservations:
      - {mac: "52:54:00:00:00:10", ip: 10.77.0.10, name: web1}
policies: [clean-traffic]
guests:
  - {name: web1, mac: "52:54:00:00:00:10", policies: [web-server]}
  - {name: db1, mac: "52:54:00:00:00:11"}
"""


def vnet(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VNET, "--config-dir", str(tmp / "config"), "--state-dir", str(tmp / "state"),
         "--policy-dir", str(tmp / "policies"), *args],
        capture_output=True, text=True, timeout=60, check=False)


def setup(tmp: Path) -> None:
    (tmp / "config").mkdir()
    (tmp / "policies").mkdir()
    (tmp / "config" / "lab.yaml").write_text(LAB)


def test_compile_json_is_the_document(tmp_path: Path) -> None:
    setup(tmp_path)
    proc = vnet(tmp_path, "policy", "compile", "--json", "--stateless")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rules = [c["add"]["rule"] for c in doc["nftables"] if "rule" in c.get("add", {})]
    assert any(r.get("comment", "").startswith("vnet/policies/web-server.yaml:10") for r in rules)
    text = vnet(tmp_path, "policy", "compile", "--stateless")
    assert "table inet vnet" in text.stdout
    assert "# lab: clean-traffic, web-server -> chains out_0_0 / in_0_0" in text.stdout


def test_explain_names_file_and_line(tmp_path: Path) -> None:
    setup(tmp_path)
    proc = vnet(tmp_path, "policy", "explain", "--from", "db1", "--to", "10.77.0.10:22/tcp")
    assert proc.returncode == 0, proc.stderr
    # db1 has no address yet: clean-traffic drops what it sends
    assert proc.stdout.strip().endswith("DROP: vnet/policies/no-ip-spoofing.yaml:8 "
                                        "no-ip-spoofing outbound #1")
    proc = vnet(tmp_path, "policy", "explain", "--from", "web1", "--to", "10.77.0.10:443/tcp")
    assert "ACCEPT: vnet/policies/web-server.yaml:10" in proc.stdout


def test_bad_user_policy_is_reported_with_line(tmp_path: Path) -> None:
    setup(tmp_path)
    (tmp_path / "policies" / "mine.yaml").write_text(
        "inbound:\n  rules:\n    - {proto: tcp, dport: http, action: accept}\n")
    proc = vnet(tmp_path, "policy", "compile")
    assert proc.returncode == 2
    assert f"{tmp_path}/policies/mine.yaml:3: inbound.rules[0].dport" in proc.stderr
