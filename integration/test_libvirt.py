"""A real libvirtd starts a QEMU guest on vnet through the qemu hook (contrib/libvirt/qemu.d/vnet).

libvirtd 9.0 (Debian's monolithic ``libvirtd``, qemu driver) runs INSIDE the test's host
namespace, in its own mount namespace where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/log/libvirt and /var/cache/libvirt are the test's directories (bind mounts), so nothing
it writes reaches the machine; it has no networks (no ``default``), no security driver, no
cgroups, no QEMU namespaces, and QEMU logs to files (no virtlogd). ``vnet daemon`` runs in
the same namespace (network ``lab``, bridge vn-lab, ``clean-traffic``). The hook installed in
the private ``hooks/qemu.d/`` is a wrapper that supplies what libvirt does not pass to hooks
(``VNET_RUN_DIR``, the venv's ``vnet`` on PATH), runs the contrib script and logs each call
with its exit code. virsh talks to this libvirtd through its socket in the private
/run/libvirt (``qemu+unix:///system?socket=...``).

The guest is the Debian kernel + busybox initramfs of ``tests.guestvm`` booted directly by
libvirt (domain type='qemu', i.e. TCG, no disk); its script comes through fw_cfg
(``<sysinfo type='fwcfg'>``), runs udhcpc and prints the leased address on the serial console
(a file), then idles until ``virsh destroy``.

- ethernet: ``<interface type='ethernet'>`` with ``<target dev='vm1tap' managed='no'/>``
  and vnet metadata: ``prepare begin`` makes vm1tap before QEMU opens it; ``release end``
  after ``virsh destroy`` removes it.
- bridge: ``<interface type='bridge'>`` on vn-lab, no metadata: libvirt makes and enslaves
  ``vnetN`` itself; vnet adopts it by MAC.
- restart: libvirtd is stopped and started while the guest runs: ``reconnect begin`` must
  succeed and change nothing (same QEMU, same port ifindex, the guest still answers).

Debian 12's libvirt-daemon without libvirt-daemon-system has no ``libvirt-qemu`` user, and
the qemu driver refuses to initialise without it (``Failed to parse user 'libvirt-qemu'``,
before qemu.conf's ``user = "root"`` is read): the private mount namespace then gets copies
of /etc/passwd and /etc/group that have it. The mount points of the private directories are
created when missing (empty, as the package would make them) and removed at the end.

Run: ``VNET_TEST_NS_PREFIX=... .venv/bin/pytest integration/test_libvirt.py -q`` (root; QEMU;
Debian packages libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, VNET, NetnsFactory, sh, wait_for
from tests.guestvm import GuestAssets, prepare_assets
from tests.priv.dhcp_env import BRIDGE, DhcpLab

pytestmark = [pytest.mark.priv, pytest.mark.libvirt]

HOOK = REPO / "contrib" / "libvirt" / "qemu.d" / "vnet"
QEMU = "/usr/bin/qemu-system-x86_64"
LIBVIRTD = "/usr/sbin/libvirtd"
LEASE_MARKER = "VNET-LIBVIRT-LEASE="
BOOT_TIMEOUT = 30.0
# Where libvirtd keeps its state (compiled in): each is a private directory of the test.
PRIVATE = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
           "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}

CONFIG = """\
name: lab
mode: nat
bridge: {name: vn-lab}
policies: [clean-traffic]
ipv4:
  address: 10.77.9.1/24
  dhcp:
    ranges: [10.77.9.100-10.77.9.199]
    lease-time: 1h
"""

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

# Installed as the private /etc/libvirt/hooks/qemu.d/vnet. libvirt gives hooks PATH, HOME and
# LC_ALL only: this supplies the run dir and the venv's vnet, then logs "ARGV rc=N".
HOOK_WRAPPER = """\
#!/bin/sh
export VNET_RUN_DIR={run_dir}
export PATH={venv_bin}:"$PATH"
{hook} "$@" 2>>{log}.stderr
rc=$?
echo "$* rc=$rc" >> {log}
exit $rc
"""

# The guest's script (fw_cfg opt/vnet/init, run by the initramfs's /init): configure a lease,
# print it, idle (returning would reboot, and libvirt would stop the domain).
GUEST_SCRIPT = f"""\
printf '%s\\n' '#!/bin/sh' \\
  'case "$1" in' \\
  '  deconfig) ip -4 addr flush dev "$interface" ;;' \\
  '  bound|renew) ip addr add "$ip/${{mask:-24}}" dev "$interface"; echo "{LEASE_MARKER}$ip" ;;' \\
  'esac' > /tmp/lease.sh
chmod +x /tmp/lease.sh
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /tmp/lease.sh || echo VNET-LIBVIRT-NO-LEASE
while :; do sleep 3600; done
"""

DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  {metadata}
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <sysinfo type='fwcfg'>
    <entry name='opt/vnet/init' file='{script}'/>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    {interface}
    <serial type='file'><source path='{console}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""
# (ACPI on: the guest finds fw_cfg through it. cpu 'maximum' = TCG's "max".)

ETHERNET = """<interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{dev}' managed='no'/>
      <model type='virtio'/>
    </interface>"""

BRIDGED = """<interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>"""

METADATA = """<metadata>
    <vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
      <vnet:port mac="{mac}" network="lab" guest="{guest}">
        <vnet:policy name="clean-traffic"/>
      </vnet:port>
    </vnet:ports>
  </metadata>"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    for path in (QEMU, LIBVIRTD):
        if not os.access(path, os.X_OK):
            return f"no {path} (Debian qemu-system-x86, libvirt-daemon, libvirt-daemon-driver-qemu)"
    for tool in ("virsh", "unshare"):
        if shutil.which(tool) is None:
            return f"no {tool} (Debian libvirt-clients, util-linux)"
    return None


def _has_user(name: str) -> bool:
    return any(line.split(":", 1)[0] == name for line in Path("/etc/passwd").read_text().splitlines())


def _has_group(name: str) -> bool:
    return any(line.split(":", 1)[0] == name for line in Path("/etc/group").read_text().splitlines())


# Run by `unshare --mount` inside the host namespace: bind the private directories over
# libvirt's, then become libvirtd (same PID: ip netns exec, unshare and sh all exec).
LAUNCH = """\
set -e
for pair in "$@"; do mount --bind "${pair%=*}" "${pair#*=}"; done
exec "$LIBVIRTD" -f /etc/libvirt/libvirtd.conf
"""


class Libvirtd:
    """One private libvirtd in ``ns``; ``start``/``stop`` may be repeated (same directories)."""

    def __init__(self, ns: str, root: Path, cache: Path, run_dir: str) -> None:
        """``run_dir``: the vnet daemon's (the hook's VNET_RUN_DIR)."""
        self.ns = ns
        self.root = root
        self.dirs = {key: root / key for key in PRIVATE}
        self.dirs["cache"] = cache  # shared by the module: the QEMU capability probe is ~8 s
        for path in self.dirs.values():
            path.mkdir(exist_ok=True)
        etc = self.dirs["etc"]
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        hooks = etc / "hooks" / "qemu.d"  # must exist when libvirtd starts
        hooks.mkdir(parents=True)
        self.hook_log = root / "hook.log"
        command = shlex.join([str(HOOK)] if HOOK.exists() else [VNET, "hook", "libvirt"])
        wrapper = hooks / "vnet"
        wrapper.write_text(HOOK_WRAPPER.format(hook=command, log=shlex.quote(str(self.hook_log)),
                                               run_dir=shlex.quote(run_dir), venv_bin=shlex.quote(str(VENV_BIN))))
        wrapper.chmod(0o755)
        self.binds = [f"{self.dirs[key]}={target}" for key, target in PRIVATE.items()]
        if not _has_user("libvirt-qemu") or not _has_group("libvirt-qemu"):
            passwd, group = root / "passwd", root / "group"
            passwd.write_text(Path("/etc/passwd").read_text()
                              + "libvirt-qemu:x:64055:64055:vnet test:/var/lib/libvirt:/usr/sbin/nologin\n")
            group.write_text(Path("/etc/group").read_text() + "libvirt-qemu:x:64055:\n")
            self.binds += [f"{passwd}=/etc/passwd", f"{group}=/etc/group"]
        self.uri = f"qemu+unix:///system?socket={self.dirs['run'] / 'libvirt-sock'}"
        self.log = root / "libvirtd.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start libvirtd pinned to one CPU: its QEMU capability cache holds the host's cpuid, which
        differs between this machine's vCPUs ("Outdated capabilities ...: host cpuid changed"
        in its debug log), so an unpinned libvirtd re-probes QEMU (~8 s) on most starts. libvirt
        gives QEMU every host CPU again (its affinity is not libvirtd's)."""
        networks = self.dirs["etc"] / "qemu" / "networks"
        for stale in [*networks.glob("*.xml"), *networks.glob("autostart/*")]:
            stale.unlink()  # never a libvirt network here (the package's 'default' included)
        cpu = str(min(os.sched_getaffinity(0)))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "taskset", "-c", cpu,
                 "unshare", "--mount", "--propagation", "private", "sh", "-c", LAUNCH, "launch", *self.binds],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                     "LIBVIRTD": LIBVIRTD},
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"libvirtd exited {self.proc.returncode}:\n{self.logtext()}")
            return self.virsh("-q", "version", check=False).returncode == 0

        assert wait_for(ready, timeout=20), self.logtext()
        assert Path(f"/proc/{self.proc.pid}/comm").read_text().strip() == "libvirtd"
        assert self.virsh("net-list", "--all", "--name").stdout.strip() == ""  # no 'default'

    def stop(self) -> None:
        """SIGTERM by PID (guests keep running, as with ``systemctl stop libvirtd``)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def virsh(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("virsh", "-c", self.uri, *args, check=check, timeout=timeout)

    def qemu_pid(self, name: str) -> int | None:
        path = self.dirs["run"] / "qemu" / f"{name}.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        return None

    def hook_calls(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def hook_stderr(self) -> str:
        path = Path(f"{self.hook_log}.stderr")
        return path.read_text() if path.exists() else ""

    def logtext(self) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        daemon_log = self.dirs["log"] / "libvirtd.log"
        if daemon_log.exists():
            text += "\n--- libvirtd.log (tail) ---\n" + "\n".join(daemon_log.read_text().splitlines()[-30:])
        return text

    def close(self) -> None:
        """Destroy what runs, stop libvirtd, then kill by PID any QEMU it left (its pid files)."""
        if self.proc is not None and self.proc.poll() is None:
            names = self.virsh("list", "--name", check=False).stdout.split()
            for name in names:
                self.virsh("destroy", name, check=False)
        self.stop()
        for pidfile in (self.dirs["run"] / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def libvirt_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's capability cache; the mount points of the private directories."""
    if reason := _missing():
        pytest.skip(reason)
    made = []
    for target in PRIVATE.values():
        if not os.path.isdir(target):
            os.makedirs(target, mode=0o755)
            made.append(target)
    try:
        yield tmp_path_factory.mktemp("libvirt-cache")
    finally:
        for target in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(target)  # only if empty (the private mounts died with libvirtd)


@dataclass
class Env:
    lab: DhcpLab
    libvirtd: Libvirtd
    assets: GuestAssets
    tmp: Path

    def define(self, name: str, interface: str, metadata: str = "") -> Path:
        """Define the guest; returns its console file."""
        script = self.tmp / "guest-init.sh"
        script.write_text(GUEST_SCRIPT)
        console = self.tmp / f"console-{name}.log"
        uuid = f"5c1a3f2e-8b4d-4e6a-9f0b-{sum(name.encode()) * 7919:012x}"
        xml = DOMAIN.format(name=name, uuid=uuid, metadata=metadata, script=script,
                            kernel=self.assets.vmlinux, initrd=self.assets.initramfs_gz, qemu=QEMU,
                            interface=interface, console=console)
        path = self.tmp / f"{name}.xml"
        path.write_text(xml)
        self.libvirtd.virsh("define", str(path))
        return console


@pytest.fixture
def env(netns_factory: NetnsFactory, tmp_path: Path, libvirt_dirs: Path) -> Iterator[Env]:
    assets = prepare_assets()  # Debian kernel + busybox initramfs, cached (tests.guestvm)
    lab = DhcpLab(netns_factory, tmp_path, CONFIG, manual_l2=False)
    daemon: Libvirtd | None = None
    try:
        lab.start_daemon()
        root = tmp_path / "libvirt"
        root.mkdir()
        daemon = Libvirtd(lab.host, root, libvirt_dirs, str(lab.run_dir))
        daemon.start()
        yield Env(lab, daemon, assets, tmp_path)
    finally:
        if daemon is not None:
            daemon.close()
        lab.close()


def links(ns: str) -> dict[str, dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", "-d", "link").stdout
    return {link["ifname"]: link for link in json.loads(out)}


def port_of(ns: str, alias: str) -> dict[str, Any] | None:
    return next((link for link in links(ns).values() if link.get("ifalias") == alias), None)


def guests(lab: DhcpLab) -> list[dict[str, Any]]:
    out = sh(VNET, "guest", "list", "lab", "--json", "--run-dir", str(lab.run_dir),
             "--state-dir", str(lab.state_dir), "--config-dir", str(lab.config_dir)).stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def wait_lease(console: Path, started: float) -> str:
    """The address the guest printed on its console (waits for the boot)."""
    found: list[str] = []

    def leased() -> bool:
        text = console.read_text(errors="replace") if console.exists() else ""
        found[:] = re.findall(re.escape(LEASE_MARKER) + r"(\d+\.\d+\.\d+\.\d+)", text)
        return bool(found) or "VNET-LIBVIRT-NO-LEASE" in text

    wait_for(leased, timeout=BOOT_TIMEOUT - (time.monotonic() - started), interval=0.1)
    text = console.read_text(errors="replace") if console.exists() else "(no console file)"
    assert found, f"no lease after {time.monotonic() - started:.1f} s; console:\n{text[-3000:]}"
    return found[0]


def lease_line(lab: DhcpLab, mac: str) -> str | None:
    return next((line for line in lab.leases().splitlines() if mac in line), None)


def test_ethernet_port_made_by_prepare_removed_by_release(env: Env) -> None:
    mac, name, dev = "52:54:00:00:09:01", "vm1", "vm1tap"
    console = env.define(name, ETHERNET.format(mac=mac, dev=dev), METADATA.format(mac=mac, guest=name))
    started = time.monotonic()
    env.libvirtd.virsh("start", name)
    assert f"{name} prepare begin - rc=0" in env.libvirtd.hook_calls(), env.libvirtd.hook_calls()
    port = links(env.lab.host)[dev]  # made by prepare, before QEMU opened it
    assert (port["ifalias"], port["master"]) == (f"vnet:lab:port:{name}", BRIDGE)
    [guest] = guests(env.lab)
    assert (guest["guest"], guest["mac"], guest["ifname"], guest["origin"]) == (name, mac, dev, "libvirt")
    address = wait_lease(console, started)
    assert address in (lease_line(env.lab, mac) or ""), env.lab.leases()
    qemu = env.libvirtd.qemu_pid(name)
    assert qemu is not None

    env.libvirtd.virsh("destroy", name)
    assert f"{name} release end - rc=0" in env.libvirtd.hook_calls(), env.libvirtd.hook_calls()
    assert dev not in links(env.lab.host)  # release ran before `virsh destroy` returned
    assert guests(env.lab) == []
    assert not Path(f"/proc/{qemu}").exists()
    assert env.libvirtd.hook_stderr() == ""


def test_bridge_interface_tap_made_by_libvirt_is_adopted(env: Env) -> None:
    mac, name = "52:54:00:00:09:02", "vm2"
    console = env.define(name, BRIDGED.format(bridge=BRIDGE, mac=mac))  # no vnet metadata
    started = time.monotonic()
    env.libvirtd.virsh("start", name)
    assert f"{name} prepare begin - rc=0" in env.libvirtd.hook_calls(), env.libvirtd.hook_calls()
    alias = f"vnet:lab:port:{name}"

    def adopted() -> bool:
        return port_of(env.lab.host, alias) is not None

    assert wait_for(adopted, timeout=10), links(env.lab.host)
    port = port_of(env.lab.host, alias)
    assert port is not None
    assert re.fullmatch(r"vnet\d+", port["ifname"]), port["ifname"]  # libvirt named it
    assert (port["master"], port["address"]) == (BRIDGE, "fe" + mac[2:])
    [guest] = guests(env.lab)
    assert (guest["guest"], guest["mac"], guest["ifname"]) == (name, mac, port["ifname"])
    address = wait_lease(console, started)
    assert address in (lease_line(env.lab, mac) or ""), env.lab.leases()

    env.libvirtd.virsh("destroy", name)
    assert f"{name} release end - rc=0" in env.libvirtd.hook_calls(), env.libvirtd.hook_calls()
    assert port["ifname"] not in links(env.lab.host)
    assert port_of(env.lab.host, alias) is None
    assert guests(env.lab) == []
    assert env.libvirtd.hook_stderr() == ""


def test_libvirtd_restart_reconnects_without_touching_the_guest(env: Env) -> None:
    mac, name, dev = "52:54:00:00:09:01", "vm1", "vm1tap"
    console = env.define(name, ETHERNET.format(mac=mac, dev=dev), METADATA.format(mac=mac, guest=name))
    started = time.monotonic()
    env.libvirtd.virsh("start", name)
    address = wait_lease(console, started)
    before = links(env.lab.host)[dev]
    qemu = env.libvirtd.qemu_pid(name)
    assert qemu is not None

    env.libvirtd.stop()
    assert Path(f"/proc/{qemu}").exists()  # the guest outlives libvirtd
    env.libvirtd.start()

    def reconnected() -> bool:
        return any(call.startswith(f"{name} reconnect begin ") for call in env.libvirtd.hook_calls())

    assert wait_for(reconnected, timeout=15), env.libvirtd.hook_calls()
    assert f"{name} reconnect begin - rc=0" in env.libvirtd.hook_calls(), env.libvirtd.hook_calls()
    assert env.libvirtd.virsh("domstate", name).stdout.strip() == "running"
    assert env.libvirtd.qemu_pid(name) == qemu
    after = links(env.lab.host)[dev]
    assert (after["ifindex"], after["ifalias"], after["master"]) == \
        (before["ifindex"], before["ifalias"], before["master"])
    assert len(guests(env.lab)) == 1
    sh("ip", "netns", "exec", env.lab.host, "ping", "-c", "1", "-W", "3", address)  # still on the net

    env.libvirtd.virsh("destroy", name)
    assert dev not in links(env.lab.host)
    assert guests(env.lab) == []
    assert env.libvirtd.hook_stderr() == ""
