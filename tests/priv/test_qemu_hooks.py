"""QEMU's ``script=``/``downscript=`` protocol with vnet's contrib scripts, against a real QEMU.

Each test runs ``vnet daemon`` (it applies L2 itself) in its own host namespace and QEMU (TCG,
paused with ``-S``, no disk) inside that namespace. QEMU is synchronised through a QMP socket:
``query-status`` answers only once QEMU's main loop runs, i.e. after the ifup script returned.
A watchdog kills each QEMU by PID if a test hangs. Also here: the daemon's sd_notify protocol
(``Type=notify`` in contrib/systemd/vnet.service) against a real NOTIFY_SOCKET.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, VNET, NetnsFactory, ns_exec, wait_for
from tests.priv.dhcp_env import BRIDGE, DhcpLab
from vnet import api

pytestmark = [
    pytest.mark.priv,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun"),
]

IFUP = REPO / "contrib" / "qemu" / "vnet-ifup"
IFDOWN = REPO / "contrib" / "qemu" / "vnet-ifdown"

NET = """\
name: lab
mode: nat
bridge: {name: vn-lab}
ipv4:
  address: 10.77.0.1/24
"""
DECLARED = NET + """\
guests:
  - {name: vm3, mac: "52:54:00:00:07:03", ifname: vm3tap, port: tap}
"""


class Qemu:
    """One paused QEMU with a TAP netdev, run inside ``host``; killed by PID on timeout."""

    def __init__(self, host: str, tmp: Path, ifname: str, mac: str, script: Path | str = "no",
                 downscript: Path | str = "no", env: dict[str, str] | None = None,
                 limit: float = 30.0) -> None:
        self.qmp = tmp / f"qmp-{ifname}.sock"
        self.err = tmp / f"qemu-{ifname}.err"
        cmd = ["ip", "netns", "exec", host, "qemu-system-x86_64", "-accel", "tcg", "-m", "64",
               "-S", "-nodefaults", "-nographic", "-monitor", "none", "-serial", "none",
               "-display", "none", "-qmp", f"unix:{self.qmp},server=on,wait=off",
               "-netdev", f"tap,id=n0,ifname={ifname},script={script},downscript={downscript}",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        with self.err.open("wb") as err:
            # `ip netns exec` execs QEMU: this pid is QEMU's.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        self._watchdog = threading.Timer(limit, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def status(self, timeout: float = 10.0) -> str:
        """QMP ``query-status`` (answered from QEMU's main loop: netdev setup is over)."""
        assert wait_for(lambda: self.qmp.exists() or self.proc.poll() is not None, timeout), \
            "QEMU never opened its QMP socket"
        assert self.proc.poll() is None, f"QEMU exited {self.proc.returncode}: {self.stderr()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp))
            stream = sock.makefile("rwb")
            json.loads(stream.readline())  # the greeting
            reply: dict[str, Any] = {}
            for command in ("qmp_capabilities", "query-status"):
                stream.write(json.dumps({"execute": command}).encode() + b"\n")
                stream.flush()
                while not ({"return", "error"} & set(reply := json.loads(stream.readline()))):
                    pass  # an asynchronous event
            stream.close()
        assert "return" in reply, reply
        return str(reply["return"]["status"])

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._watchdog.cancel()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[DhcpLab]:
    env = DhcpLab(netns_factory, tmp_path, NET, manual_l2=False)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def qemus() -> Iterator[list[Qemu]]:
    started: list[Qemu] = []
    try:
        yield started
    finally:
        for q in started:
            q.kill()
            q.wait()


def hook_env(lab: DhcpLab, tmp: Path) -> tuple[dict[str, str], Path]:
    """QEMU's environment for the contrib scripts: `vnet` on PATH is a recorder that logs each
    call to the returned file and execs the venv's vnet; VNET_RUN_DIR is the lab's."""
    bindir, log = tmp / "bin", tmp / "hooks.log"
    bindir.mkdir(exist_ok=True)
    recorder = bindir / "vnet"
    recorder.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n"
                        f"exec {shlex.quote(VNET)} \"$@\"\n")
    recorder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "VNET_BIN"}
    env["PATH"] = f"{bindir}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["VNET_RUN_DIR"] = str(lab.run_dir)
    return env, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def vnet(lab: DhcpLab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    dirs = ["--config-dir", str(lab.config_dir), "--state-dir", str(lab.state_dir),
            "--run-dir", str(lab.run_dir), "--policy-dir", str(lab.tmp / "nopolicies")]
    return ns_exec(lab.host, VNET, *args, *dirs, check=check, timeout=30)


def links(ns: str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link"], capture_output=True, text=True,
                         check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def tap(link: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = link["linkinfo"]["info_data"]
    return data


def test_attached_port_qemu_ifup_and_ifdown(lab: DhcpLab, qemus: list[Qemu], tmp_path: Path) -> None:
    """`vnet guest add` makes a persistent TAP; QEMU opens it, its ifup script says yes."""
    mac = "52:54:00:00:07:02"
    lab.start_daemon()
    vnet(lab, "guest", "add", "lab", "vm2", "--mac", mac, "--ifname", "vm2tap")
    made = links(lab.host)["vm2tap"]
    assert (made["ifalias"], made["master"], tap(made)["persist"]) == ("vnet:lab:port:vm2", BRIDGE, True)
    env, log = hook_env(lab, tmp_path)
    q = Qemu(lab.host, tmp_path, "vm2tap", mac, script=IFUP, downscript=IFDOWN, env=env)
    qemus.append(q)
    assert q.status() == "prelaunch"
    assert calls(log) == ["hook qemu-ifup vm2tap"]
    held = links(lab.host)["vm2tap"]
    assert held["ifindex"] == made["ifindex"]
    assert held["master"] == BRIDGE
    assert "LOWER_UP" in held["flags"]  # QEMU has it open
    status = vnet(lab, "status").stdout
    assert "network lab (nat): in sync" in status, status
    assert f"port vm2tap (tap, guest vm2, {mac}): up, carrier" in status, status
    assert q.stop(signal.SIGTERM) == 0, q.stderr()
    assert calls(log) == ["hook qemu-ifup vm2tap", "hook qemu-ifdown vm2tap"]
    assert "vnet hook" not in q.stderr(), q.stderr()
    assert "failed" not in q.stderr(), q.stderr()
    left = links(lab.host)["vm2tap"]  # vnet's TAP outlives QEMU, still attached
    assert (left["ifindex"], left["master"]) == (made["ifindex"], BRIDGE)
    assert vnet(lab, "plan").stdout.strip() == "no changes"


def test_daemon_adopts_the_tap_qemu_made_first(lab: DhcpLab, qemus: list[Qemu], tmp_path: Path) -> None:
    """A declared guest's TAP that QEMU created before the daemon started is adopted, not
    refused and not recreated; once QEMU is gone, vnet makes the port itself again (its link
    watch notices the deletion and queues a check)."""
    lab.write_config(DECLARED)
    q = Qemu(lab.host, tmp_path, "vm3tap", "52:54:00:00:07:03")  # script=no
    qemus.append(q)
    assert q.status() == "prelaunch"
    before = links(lab.host)["vm3tap"]
    assert tap(before)["persist"] is False
    assert "ifalias" not in before
    assert "master" not in before
    lab.start_daemon()
    adopted = links(lab.host)["vm3tap"]
    assert adopted["ifindex"] == before["ifindex"]
    assert adopted["ifalias"] == "vnet:lab:port:vm3"
    assert adopted["master"] == BRIDGE
    assert "UP" in adopted["flags"]
    assert vnet(lab, "plan").stdout.strip() == "no changes"
    assert "in sync" in vnet(lab, "status").stdout
    assert q.stop() == 0, q.stderr()

    def remade_by_vnet() -> bool:  # QEMU's TAP died with it; the link watch's check remakes it
        link = links(lab.host).get("vm3tap")
        return link is not None and link["ifindex"] != before["ifindex"]

    assert wait_for(remade_by_vnet, timeout=5), lab.logtext()
    remade = links(lab.host)["vm3tap"]
    assert (remade["ifalias"], remade["master"], tap(remade)["persist"]) == \
        ("vnet:lab:port:vm3", BRIDGE, True)
    assert vnet(lab, "plan").stdout.strip() == "no changes"


def test_unknown_ifname_fails_qemu_start(lab: DhcpLab, qemus: list[Qemu], tmp_path: Path) -> None:
    lab.start_daemon()
    env, log = hook_env(lab, tmp_path)
    began = time.monotonic()
    q = Qemu(lab.host, tmp_path, "nosuch0", "52:54:00:00:07:09", script=IFUP, downscript=IFDOWN,
             env=env)
    qemus.append(q)
    code = q.wait(timeout=10)
    took = time.monotonic() - began
    assert code != 0, q.stderr()
    assert took < 5, f"QEMU took {took:.1f} s to fail"
    assert calls(log) == ["hook qemu-ifup nosuch0"]  # no ifdown for a netdev that never came up
    ours = [line for line in q.stderr().splitlines() if line.startswith("vnet hook")]
    assert len(ours) == 1, q.stderr()
    assert "'nosuch0'" in ours[0]
    assert "vnet guest add" in ours[0]
    assert "guests[].ifname" in ours[0]
    now = links(lab.host)
    assert "nosuch0" not in now
    assert not [name for name, link in now.items() if link.get("master") == BRIDGE]
    assert vnet(lab, "plan").stdout.strip() == "no changes"


def test_down_refuses_while_qemu_holds_a_port(lab: DhcpLab, qemus: list[Qemu], tmp_path: Path) -> None:
    mac = "52:54:00:00:07:04"
    lab.start_daemon()
    vnet(lab, "guest", "add", "lab", "vm4", "--mac", mac, "--ifname", "vm4tap")
    env, _log = hook_env(lab, tmp_path)
    q = Qemu(lab.host, tmp_path, "vm4tap", mac, script=IFUP, env=env)
    qemus.append(q)
    assert q.status() == "prelaunch"
    refused = vnet(lab, "down", "lab", check=False)
    assert refused.returncode == 1, refused
    assert "vm4 (vm4tap)" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr
    assert lab.stop_daemon() == 0  # the data plane stays; down still refuses for the guest
    refused = vnet(lab, "down", "lab", check=False)
    assert refused.returncode == 1, refused
    assert "vm4 (vm4tap)" in refused.stderr, refused.stderr
    assert "vm4tap" in links(lab.host)
    forced = vnet(lab, "down", "lab", "--force")
    assert "vm4tap" in forced.stdout, forced.stdout
    assert BRIDGE in forced.stdout, forced.stdout
    now = links(lab.host)
    assert not [n for n, link in now.items() if str(link.get("ifalias", "")).startswith("vnet:")]
    assert "vm4tap" not in now
    assert BRIDGE not in now
    assert q.proc.poll() is None  # QEMU itself is not vnet's to stop
    assert q.stop() == 0, q.stderr()


def test_daemon_notifies_ready_after_api_and_stopping(
    lab: DhcpLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    seen: list[str] = []
    api_at_ready: list[object] = []

    def listen() -> None:
        try:
            while True:
                seen.append(sock.recv(4096).decode())
                if "READY=1" in seen[-1].split("\n"):
                    api_at_ready.append(api.call(lab.run_dir, "GET", "/v1/status", timeout=2))
                    return
        except Exception as err:  # reported by the asserts below
            api_at_ready.append(err)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        lab.start_daemon()
        listener.join(20)
        assert not listener.is_alive()
        assert len(seen) == 1, seen  # nothing before READY
        assert isinstance(api_at_ready[0], dict), api_at_ready  # the API answered at READY
        fields = dict(line.split("=", 1) for line in seen[0].split("\n"))
        assert lab.daemon is not None
        assert fields["READY"] == "1"
        assert fields["MAINPID"] == str(lab.daemon.pid)
        lab.daemon.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert lab.daemon.wait(20) == 0
        lab.daemon = None
    finally:
        sock.close()
