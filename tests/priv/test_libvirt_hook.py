"""libvirt's qemu hook (contrib/libvirt/qemu.d/vnet) driven as libvirtd drives it.

The test plays libvirtd: it runs the installed script inside the host namespace with
``GUEST OP SUBOP EXTRA`` and the domain XML on stdin, against a ``vnet daemon`` that applies L2
itself, and checks what the kernel then holds. Hostile input must be refused with one stderr
line and leave the host as it was. The hook's wall time is measured against libvirt's budget.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, VNET, NetnsFactory
from tests.priv.dhcp_env import BRIDGE, DhcpLab
from vnet import api
from vnet.errors import ApiError

pytestmark = pytest.mark.priv

HOOK = REPO / "contrib" / "libvirt" / "qemu.d" / "vnet"
MAC = "52:54:00:00:08:01"

NET = """\
name: lab
mode: nat
bridge: {name: vn-lab}
ipv4:
  address: 10.77.0.1/24
"""

# What libvirt 9 writes to a hook's stdin for a guest on an unmanaged TAP (trimmed of disks).
DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>3f1c2a9e-6b7d-4c8e-9a0f-1b2c3d4e5f60</uuid>
  <metadata>
    <vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
      <vnet:port mac="{mac}" network="lab">
        <vnet:policy name="clean-traffic"/>
      </vnet:port>
    </vnet:ports>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='network'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{dev}' managed='no'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
""" + DOMAIN.replace("<name>{name}</name>", "<name>{name}&lol9;</name>")

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE domain [ <!ENTITY leak SYSTEM "file:///etc/shadow"> ]>
""" + DOMAIN.replace("<name>{name}</name>", "<name>{name}&leak;</name>")


def domain(name: str = "lv1", dev: str = "lv1tap", mac: str = MAC, template: str = DOMAIN) -> str:
    return template.replace("{name}", name).replace("{dev}", dev).replace("{mac}", mac)


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[DhcpLab]:
    env = DhcpLab(netns_factory, tmp_path, NET, manual_l2=False)
    try:
        env.start_daemon()
        yield env
    finally:
        env.close()


def hook(ns: str, run_dir: Path, argv: Sequence[str | bytes], xml: str | bytes = "",
         vnet_bin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the hook as libvirtd does (its environment: PATH, no VNET_* but the run dir).
    ``vnet_bin``: found through VNET_BIN instead of PATH."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"PATH": path if vnet_bin else f"{VENV_BIN}:{path}", "LC_ALL": "C",
           "VNET_RUN_DIR": str(run_dir)}
    if vnet_bin:
        env["VNET_BIN"] = vnet_bin
    data = xml.encode() if isinstance(xml, str) else xml
    cmd: list[str | bytes] = ["ip", "netns", "exec", ns, str(HOOK), *argv]
    return subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=10, check=False)


def ok(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stderr == b"", proc.stderr
    assert proc.stdout == b"", proc.stdout


def links(ns: str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link"], capture_output=True, text=True,
                         check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def shape(ns: str) -> dict[str, tuple[object, ...]]:
    """What a hook may change about each link (not the kernel's own timers and carrier state)."""
    out: dict[str, tuple[object, ...]] = {}
    for name, link in links(ns).items():
        info = link.get("linkinfo", {})
        tun = info.get("info_data") if info.get("info_kind") == "tun" else None  # a bridge's has timers
        out[name] = (link["ifindex"], link.get("ifalias"), link.get("master"), link["group"],
                     link["mtu"], link["address"], info.get("info_kind"), json.dumps(tun, sort_keys=True))
    return out


def ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                          text=True, check=True).stdout


def guests(lab: DhcpLab) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api.call(lab.run_dir, "GET", "/v1/networks/lab/guests")
    return rows


def test_prepare_reconnect_release(lab: DhcpLab) -> None:
    xml = domain()
    ok(hook(lab.host, lab.run_dir, ["lv1", "prepare", "begin", "-"], xml))
    port = links(lab.host)["lv1tap"]
    assert (port["ifalias"], port["master"]) == ("vnet:lab:port:lv1", BRIDGE)
    assert port["linkinfo"]["info_data"]["persist"] is True  # QEMU opens it later (managed='no')
    [guest] = guests(lab)
    assert (guest["guest"], guest["mac"], guest["ifname"], guest["origin"]) == \
        ("lv1", MAC, "lv1tap", "libvirt")
    assert "clean-traffic" in guest["policies"]
    rules = ruleset(lab.host)
    assert f'"lv1tap" . {MAC}' in rules  # the guest's MAC is bound to its port
    stable = shape(lab.host)
    ok(hook(lab.host, lab.run_dir, ["lv1", "prepare", "begin", "-"], xml))  # idempotent
    assert shape(lab.host) == stable
    ok(hook(lab.host, lab.run_dir, ["lv1", "reconnect", "begin", "-"], xml))
    assert shape(lab.host) == stable
    assert ruleset(lab.host) == rules
    assert len(guests(lab)) == 1
    ok(hook(lab.host, lab.run_dir, ["lv1", "release", "end", "-"], xml))
    assert "lv1tap" not in links(lab.host)
    assert guests(lab) == []
    assert MAC not in ruleset(lab.host)
    ok(hook(lab.host, lab.run_dir, ["lv1", "release", "end", "-"], xml))  # idempotent
    ok(hook(lab.host, lab.run_dir, ["lv1", "prepare", "begin", "-"], xml))
    assert "lv1tap" in links(lab.host)
    ok(hook(lab.host, lab.run_dir, ["lv1", "release", "end", "shutdown"], xml))  # libvirt >= 10.5
    assert "lv1tap" not in links(lab.host)
    assert guests(lab) == []
    with pytest.raises(ApiError, match="no guest"):
        api.call(lab.run_dir, "GET", "/v1/networks/lab/guests/lv1")


def test_operations_vnet_ignores_need_no_daemon(host_ns: str, tmp_path: Path) -> None:
    nowhere = tmp_path / "run"  # no daemon has ever listened here
    nowhere.mkdir()
    before = shape(host_ns)
    for op, subop in (("started", "begin"), ("start", "begin"), ("stopped", "end"),
                      ("restore", "begin"), ("frobnicate", "later")):
        ok(hook(host_ns, nowhere, ["lv1", op, subop, "-"], domain()))
    ok(hook(host_ns, nowhere, ["lv1", "started", "begin", "-"], domain(), vnet_bin=VNET))
    assert hook(host_ns, nowhere, ["lv1", "started", "begin", "-"], domain()).returncode == 0
    missing = hook(host_ns, nowhere, ["lv1", "started", "begin", "-"], domain(),
                   vnet_bin=str(tmp_path / "no-such-vnet"))
    assert missing.returncode == 127  # VNET_BIN is used as given, not looked up elsewhere
    # A guest vnet does not serve starts without a daemon; one it serves does not.
    foreign = domain().replace("vnet:port", "other:port").replace("vnet.dev", "example.org")
    ok(hook(host_ns, nowhere, ["lv1", "prepare", "begin", "-"], foreign))
    refused = hook(host_ns, nowhere, ["lv1", "prepare", "begin", "-"], domain())
    assert refused.returncode == 1
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert b"no vnet daemon" in refused.stderr, refused.stderr
    assert shape(host_ns) == before


# (id, argv, domain XML, what the one stderr line must say)
HOSTILE: list[tuple[str, list[str | bytes], str, bytes]] = [
    ("shell-in-name", [";rm -rf /", "prepare", "begin", "-"], domain(";rm -rf /"), b"contains ';'"),
    ("command-substitution", ["$(id)", "prepare", "begin", "-"], domain("$(id)"), b"contains '$'"),
    ("newline-in-name", ["lv1\nlv2", "prepare", "begin", "-"], domain(), b"non-printable"),
    ("300-byte-name", ["v" * 300, "prepare", "begin", "-"], domain("v" * 300), b"is 300 bytes"),
    ("non-utf8-argv", [b"lv\xff1", "prepare", "begin", "-"], domain(), b"not valid UTF-8 (byte 0xff)"),
    ("long-dev", ["lv1", "prepare", "begin", "-"], domain(dev="lv1tap-much-too-long"),
     b"target dev 'lv1tap-much-too-long' is 20 bytes"),
    ("billion-laughs", ["lv1", "prepare", "begin", "-"], domain(template=LAUGHS), b"<!DOCTYPE>"),
    ("external-entity", ["lv1", "prepare", "begin", "-"], domain(template=EXTERNAL), b"<!DOCTYPE>"),
    ("name-mismatch", ["lv1", "prepare", "begin", "-"], domain("lv2"), b"is for 'lv2'"),
]


@pytest.mark.parametrize(("argv", "xml", "why"), [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_input_is_refused_and_creates_nothing(
    lab: DhcpLab, argv: list[str | bytes], xml: str, why: bytes
) -> None:
    before = shape(lab.host)
    rules = ruleset(lab.host)
    proc = hook(lab.host, lab.run_dir, argv, xml)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(b"vnet hook libvirt: "), lines[0]
    assert why in lines[0], lines[0]
    assert shape(lab.host) == before
    assert ruleset(lab.host) == rules
    assert guests(lab) == []


def test_hook_wall_time(lab: DhcpLab) -> None:
    """libvirt waits for the hook while it holds the domain: vnet promises an answer < 2 s."""
    xml = domain()
    times: dict[str, list[float]] = {"prepare": [], "release": []}
    for _ in range(50):
        for op, subop in (("prepare", "begin"), ("release", "end")):
            began = time.monotonic()
            ok(hook(lab.host, lab.run_dir, ["lv1", op, subop, "-"], xml))
            times[op].append(time.monotonic() - began)
    every = times["prepare"] + times["release"]
    report = []
    for name, values in (*times.items(), ("all", every)):
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        report.append(f"{name}: p50 {cuts[49] * 1000:.0f} ms, p99 {cuts[98] * 1000:.0f} ms, "
                      f"max {max(values) * 1000:.0f} ms (n={len(values)})")
    print("\nlibvirt hook wall time (incl. `ip netns exec`, sh, Python start):\n  "
          + "\n  ".join(report))
    assert statistics.quantiles(every, n=100, method="inclusive")[98] < 2.0, report
    assert "lv1tap" not in links(lab.host)


def test_hook_answers_within_2s_when_the_daemon_is_stuck(lab: DhcpLab) -> None:
    """libvirt holds the domain while its hook runs: a daemon that does not answer (stopped
    here with SIGSTOP) costs the guest start at most 2 s and one stderr line, never a hang."""
    assert lab.daemon is not None
    os.kill(lab.daemon.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        proc = hook(lab.host, lab.run_dir, ["lv1", "prepare", "begin", "-"], domain())
        took = time.monotonic() - began
    finally:
        os.kill(lab.daemon.pid, signal.SIGCONT)
    assert proc.returncode != 0
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "did not answer" in lines[0], lines
    assert "vnet.sock" in lines[0], lines
    assert took < 2.0, f"{took:.2f} s"
    # libvirt then runs release for the failed start: whatever the daemon did late is undone.
    ok(hook(lab.host, lab.run_dir, ["lv1", "release", "end", "-"], domain()))
    assert "lv1tap" not in links(lab.host)
    assert guests(lab) == []
