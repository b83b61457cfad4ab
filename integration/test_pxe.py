"""PXE end to end: a QEMU guest (TCG, QEMU's own iPXE ROM) on a TAP port that ``vnet daemon``
created gets its DHCP lease from vnet, fetches an iPXE script over vnet's TFTP, and either
prints a marker and reboots, or chainloads a Debian kernel + busybox initramfs whose udhcpc
gets a lease from vnet again.

Success is a marker on the guest's serial console AND QEMU having exited (``-no-reboot``
turns the guest's reboot into an exit); QEMU's exit code alone proves nothing. A watchdog
kills QEMU by PID on timeout. The host side is a namespace with IPv6 off; iPXE still solicits
a router and waits ~16 s for an advertisement, so ``integration.ra`` answers with an empty one
(boot to the iPXE script: ~3 s instead of ~19 s).

Run: ``VNET_TEST_NS_PREFIX=... .venv/bin/pytest integration -q`` (root; QEMU; the Linux test
builds or reuses the guest assets of ``tests.guestvm`` under /tmp).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, NetnsFactory, sh, wait_for
from tests.guestvm import prepare_assets
from tests.priv.dhcp_env import DhcpLab

pytestmark = pytest.mark.priv

QEMU = "qemu-system-x86_64"
GATEWAY = "10.77.6.1"
MAC = "52:54:00:00:06:01"
TAP = "pxe-vm1"
BRIDGE = "vn-pxe"
MARKER = "VNET-PXE-SCRIPT-OK"
LEASE_MARKER = "VNET-PXE-LINUX-LEASE-OK"
BOOT_TIMEOUT = 55.0
# Run in the Linux guest: a udhcpc hook that configures the lease, then the proof.
GUEST_SCRIPT = f"""\
printf '%s\\n' '#!/bin/sh' \\
  'case "$1" in' \\
  '  deconfig) ip -4 addr flush dev "$interface" ;;' \\
  '  bound|renew) ip addr add "$ip/${{mask:-24}}" dev "$interface" ;;' \\
  'esac' > /tmp/lease.sh
chmod +x /tmp/lease.sh
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 5 -T 2 -s /tmp/lease.sh && echo {LEASE_MARKER}
ip -4 -o addr show dev eth0
"""

CONFIG = f"""\
name: pxe
mode: isolated
bridge: {{name: vn-pxe}}
ipv4:
  address: {GATEWAY}/24
  dhcp:
    ranges: [10.77.6.100-10.77.6.150]
    boot:
      file: undionly.kpxe
      arch: {{0: undionly.kpxe, 7: ipxe.efi}}
      ipxe: boot.ipxe
tftp: {{root: {{root}}}}
guests:
  - {{name: vm1, mac: "{MAC}", port: tap}}
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which(QEMU) is None:
        return f"no {QEMU}"
    return None


@dataclass
class Boot:
    console: str
    exited: bool
    seconds: float


@pytest.fixture
def pxe_lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[tuple[DhcpLab, Path]]:
    """``vnet daemon`` in a host namespace serving DHCP + TFTP on vn-pxe, TAP ``pxe-vm1``."""
    if reason := _missing():
        pytest.skip(reason)
    root = tmp_path / "tftp"
    root.mkdir()
    lab = DhcpLab(netns_factory, tmp_path, CONFIG.replace("{root}", str(root)), manual_l2=False)
    try:
        for key in ("all", "default"):
            sh("ip", "netns", "exec", lab.host, "sysctl", "-qw",
               f"net.ipv6.conf.{key}.disable_ipv6=1")
        yield lab, root
    finally:
        lab.close()


def boot_guest(ns: str, until: str, memory_mb: int = 256, fw_cfg: Path | None = None) -> Boot:
    """Network-boot QEMU on the TAP inside ``ns`` until it exits; a watchdog kills it by PID.

    The console is read as it comes, each line stamped with seconds since start (for the
    failure message: it shows where a slow boot spent its time).
    """
    cmd = [
        "ip", "netns", "exec", ns, QEMU, "-accel", "tcg", "-m", str(memory_mb),
        "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-boot", "order=n,reboot-timeout=0",
        "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
    ]
    if fw_cfg is not None:
        cmd += ["-fw_cfg", f"name=opt/vnet/init,file={fw_cfg}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    watchdog = threading.Timer(BOOT_TIMEOUT, proc.kill)  # by PID: the process we started
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            lines.append(f"[{time.monotonic() - started:5.1f}] {text}")
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    seconds = time.monotonic() - started
    return Boot("\n".join(lines), seconds < BOOT_TIMEOUT, seconds)


@contextlib.contextmanager
def router_advertisements(ns: str, ifname: str) -> Iterator[None]:
    """``integration.ra`` answering router solicitations on ``ifname`` (see its docstring)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "integration.ra", ifname],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()  # by PID: the process we started
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def lease_of(lab: DhcpLab, mac: str) -> str | None:
    for line in lab.leases().splitlines():
        if mac in line:
            return line
    return None


def test_ipxe_script_over_vnet_tftp(pxe_lab: tuple[DhcpLab, Path]) -> None:
    lab, root = pxe_lab
    (root / "boot.ipxe").write_text(
        f"#!ipxe\necho {MARKER}\necho padding so the marker leaves the line buffer\nreboot\n"
    )
    lab.start_daemon()
    with router_advertisements(lab.host, BRIDGE):
        boot = boot_guest(lab.host, MARKER)
    assert "Filename: boot.ipxe" in boot.console, boot.console[-3000:]  # iPXE was recognised
    assert MARKER in boot.console, boot.console[-3000:]
    assert boot.exited, f"QEMU still running after {boot.seconds:.0f} s\n{boot.console[-3000:]}"
    assert lease_of(lab, MAC), lab.leases()
    # The last ACK may still be in flight when QEMU exits: wait for the server to count it.
    def tftp() -> dict[str, int]:
        return lab.status()["networks"]["pxe"]["tftp"]  # type: ignore[index,no-any-return]

    assert wait_for(lambda: tftp()["complete"] == 1, timeout=5), tftp()
    assert boot.seconds < 60


def test_chainload_linux_whose_udhcpc_gets_a_lease(
    pxe_lab: tuple[DhcpLab, Path], tmp_path: Path
) -> None:
    lab, root = pxe_lab
    assets = prepare_assets()  # Debian kernel + busybox initramfs, cached (tests.guestvm)
    shutil.copyfile(assets.bzimage, root / "vmlinuz")
    shutil.copyfile(assets.initramfs_gz, root / "initrd.gz")
    (root / "boot.ipxe").write_text(
        "#!ipxe\n"
        "kernel vmlinuz console=ttyS0 panic=-1 quiet\n"
        "initrd initrd.gz\n"
        "boot\n"
    )
    # Run by the initramfs's /init (tests.guestvm) from fw_cfg; /init reboots afterwards, so
    # QEMU exits. The udhcpc hook configures the lease on eth0.
    script = tmp_path / "guest-init.sh"
    script.write_text(GUEST_SCRIPT)
    lab.start_daemon()
    with router_advertisements(lab.host, BRIDGE):
        boot = boot_guest(lab.host, LEASE_MARKER, memory_mb=512, fw_cfg=script)
    assert LEASE_MARKER in boot.console, boot.console[-4000:]
    assert "eth0    inet 10.77.6.1" in boot.console, boot.console[-4000:]
    assert lease_of(lab, MAC), lab.leases()
    assert boot.exited, f"QEMU still running after {boot.seconds:.0f} s\n{boot.console[-3000:]}"
    assert boot.seconds < 60
