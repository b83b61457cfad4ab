"""Guest-kernel assets and a QEMU runner for tests that need kernel features this host lacks.

The host kernel of the CI machine has no 8021q, bonding or bridge VLAN filtering, so tests of
that code run inside ONE QEMU Linux guest per batch (TCG; see /work/shared/TESTBED.md, tier 3).

Assets come from Debian only and are cached, never installed:

* ``prepare_assets()`` downloads (``apt-get download``) the ABI package behind
  ``linux-image-amd64`` and ``busybox-static``, unpacks them with ``dpkg-deb -x``, extracts the
  uncompressed ``vmlinux`` from the bzImage (boots 2x faster under TCG, PVH entry), stages the
  needed modules (plus their dependencies, ``busybox depmod``-ed so modules also autoload) and
  writes a busybox initramfs. Everything lands in ``/tmp/vnet-guest-assets/<kernel-version>/``
  (``VNET_GUEST_ASSETS`` overrides the root), built in a temporary directory and renamed into
  place, under a lock: concurrent or interrupted runs never see half an asset.
* The initramfs ``/init`` mounts proc/sys/dev, loads the modules (virtio-net and e1000 NICs
  included), then runs the shell script QEMU passes as ``-fw_cfg name=opt/vnet/init,file=PATH``
  (else ``/etc/vnet/init.sh`` if the initramfs has one) and reboots: with ``-no-reboot`` QEMU
  exits. busybox ``udhcpc -i eth0 -q -n`` configures its lease (a default script is included).

  Reuse, e.g. for PXE tests: ``a = prepare_assets()`` gives ``a.bzimage`` (for iPXE) or
  ``a.vmlinux`` (``-kernel``, faster), ``a.initramfs_gz`` / ``a.initramfs``, and your own
  script through fw_cfg (works whatever loaded the kernel); or ``build_initramfs(dest,
  assets=a, extra_files={"etc/vnet/init.sh": b"..."})`` for an initramfs carrying its script.
  Kernel command line: ``console=ttyS0 panic=-1 quiet``.
* ``run_in_guest(argv)`` boots the guest with the host root shared read-only over 9p, puts an
  overlay with a tmpfs upper on top, chroots into it and runs ``argv``; the command's output
  comes back on a second serial port (ttyS1), followed by a marker line with its exit code.
  A watchdog kills QEMU by PID when the timeout expires.

Command line: ``python tests/guestvm.py --prepare`` fetches and builds the assets (prints their
paths); ``python tests/guestvm.py --run -- CMD ARGS...`` runs a command in a guest (debugging).

This module uses the standard library only (it runs before the venv exists, and in CI setup).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ASSET_ROOT = Path(os.environ.get("VNET_GUEST_ASSETS", "/tmp/vnet-guest-assets"))
KERNEL_META_PACKAGE = "linux-image-amd64"
QEMU = "qemu-system-x86_64"
RC_MARKER = "VNET-GUEST-RC="
REPO = Path(__file__).resolve().parent.parent
PASS_ENV = ("VNET_TEST_NS_PREFIX", "VNET_REGENERATE")  # passed from the host into the guest

# Modules loaded at boot (with their dependencies). Everything a vnet test may need.
BOOT_MODULES: tuple[str, ...] = (
    "virtio_pci", "virtio_net", "e1000", "virtio_rng", "qemu_fw_cfg",
    "9p", "9pnet_virtio", "overlay",
    "8021q", "bonding", "bridge", "br_netfilter", "veth", "tun", "tap", "macvlan", "macvtap",
    "dummy", "ipvlan", "team", "team_mode_activebackup", "team_mode_loadbalance", "vxlan",
    "nf_tables", "nf_conntrack", "nf_nat", "crc32c_generic",
)
# Staged in the initramfs (autoloaded on demand through modules.alias), not loaded at boot.
EXTRA_MODULE_GLOBS: tuple[str, ...] = (
    "kernel/net/netfilter/nft_*.ko",
    "kernel/net/netfilter/nf_log_syslog.ko",
    "kernel/net/netfilter/nfnetlink*.ko",
    "kernel/net/ipv4/netfilter/nft_*.ko",
    "kernel/net/ipv6/netfilter/nft_*.ko",
    "kernel/net/bridge/netfilter/nft_*.ko",
    "kernel/net/bridge/netfilter/nf_conntrack_bridge.ko",
    "kernel/drivers/net/team/team_mode_*.ko",
    "kernel/net/sched/sch_ingress.ko",
    "kernel/net/sched/cls_u32.ko",
)
MODPROBE_CONF = "options bonding max_bonds=0\noptions dummy numdummies=0\n"
# busybox udhcpc's default hook (it has none of its own): configure the lease with `ip`.
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
        echo "udhcpc: $interface $ip/${mask:-24} router ${router:-none} server ${serverid:-?}" ;;
esac
exit 0
"""

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/vnet-boot-modules); do
    modprobe "$m" || echo "vnet-init: modprobe $m failed"
done
script=/sys/firmware/qemu_fw_cfg/by_name/opt/vnet/init/raw
[ -r "$script" ] || script=/etc/vnet/init.sh
if [ -r "$script" ]; then
    sh "$script"
else
    echo "vnet-init: no script (-fw_cfg name=opt/vnet/init,file=PATH or /etc/vnet/init.sh)"
fi
echo "vnet-init: done, rebooting"
reboot -f
"""

# Run by /init (from fw_cfg): host root over 9p (read-only) + tmpfs overlay, chroot, run the
# command with its output on ttyS1, then the exit-code marker.
CHROOT_SCRIPT = r"""
set -u
out=/dev/ttyS1
stty -F $out raw -echo 115200 2>/dev/null
mkdir -p /host /upper /newroot
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host; then
    echo "vnet-guest: cannot mount the host root over 9p" > $out
    exit 1
fi
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sys $r/sys
mount -t devtmpfs dev $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs shm $r/dev/shm
mount -t tmpfs -o mode=0755 run $r/run
# /tmp stays the overlay's (writes land in the tmpfs upper): a checkout under /tmp, as CI
# may clone one, must remain visible to the guest.
kver=$(uname -r)
mkdir -p $r/lib/modules/$kver
mount --bind /lib/modules/$kver $r/lib/modules/$kver
hostname vnet-guest
chroot $r /bin/sh -c "$(cat /sys/firmware/qemu_fw_cfg/by_name/opt/vnet/cmd/raw)" \
    > $out 2>&1 < /dev/null
rc=$?
echo "__MARKER__$rc" > $out
"""


class GuestError(RuntimeError):
    """Assets could not be fetched or built, or QEMU could not be started."""


@dataclass(frozen=True)
class GuestAssets:
    """Paths of one built asset set (all under ``root``; never modified once built)."""

    kernel_version: str
    root: Path
    vmlinux: Path  # uncompressed ELF kernel: `-kernel vmlinux` boots via PVH, 2x faster under TCG
    bzimage: Path  # the vmlinuz as Debian ships it (for bootloaders such as iPXE)
    initramfs: Path  # cpio newc, uncompressed: /init loads modules, runs fw_cfg opt/vnet/init
    initramfs_gz: Path  # the same, gzip-compressed (smaller, for network boot)
    modules_dir: Path  # staged lib/modules/<version> tree (depmod-ed), as in the initramfs
    busybox: Path  # static busybox binary


@dataclass(frozen=True)
class GuestResult:
    """What one guest run produced."""

    returncode: int | None  # the command's exit code; None if no marker (crash, timeout)
    output: str  # the command's stdout + stderr (ttyS1)
    console: str  # kernel and init messages (ttyS0)
    seconds: float
    timed_out: bool

    def describe(self) -> str:
        state = "timed out" if self.timed_out else f"exit code {self.returncode}"
        return (
            f"guest run: {state} after {self.seconds:.1f} s\n"
            f"--- command output (ttyS1) ---\n{self.output}\n"
            f"--- guest console (ttyS0) ---\n{self.console}"
        )


# --- asset building ---------------------------------------------------------------------


def _run(*cmd: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GuestError(f"{' '.join(cmd)}: {err}") from err
    if proc.returncode != 0:
        raise GuestError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def kernel_package() -> str:
    """The ABI package (``linux-image-6.1.0-NN-amd64``) that ``linux-image-amd64`` depends on."""
    out = _run("apt-cache", "depends", "--no-recommends", "--no-suggests", KERNEL_META_PACKAGE)
    found = re.findall(r"Depends:\s*(linux-image-\S+)", out)
    if not found:
        raise GuestError(f"apt-cache depends {KERNEL_META_PACKAGE}: no linux-image dependency")
    return str(found[0])


def _extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage whose payload is xz-compressed."""
    start = 0
    while (start := bzimage.find(b"\xfd7zXZ\x00", start)) >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            start += 1
            continue
        if elf.startswith(b"\x7fELF"):
            return elf
        start += 1
    raise GuestError("no xz-compressed ELF payload in the bzImage")


def _modinfo_depends(ko: Path) -> list[str]:
    """Module names from the ``depends=`` entry of a .ko's ``.modinfo`` ELF section."""
    data = ko.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name : end] == b".modinfo":
            for entry in data[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
            return []
    return []


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _module_closure(kdir: Path, roots: Iterable[str], extra: Iterable[Path]) -> list[Path]:
    """Every .ko file needed for ``roots`` and ``extra``, dependencies included."""
    index = {_norm(p.name[:-3]): p for p in (kdir / "kernel").rglob("*.ko")}
    builtin = {
        _norm(Path(line.strip()).name[:-3])
        for line in (kdir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    todo: list[Path] = []
    for name in roots:
        if _norm(name) in index:
            todo.append(index[_norm(name)])
        elif _norm(name) not in builtin:
            raise GuestError(f"kernel {kdir.name} has no module {name}")
    todo.extend(extra)
    seen: dict[Path, None] = {}
    while todo:
        ko = todo.pop()
        if ko in seen:
            continue
        seen[ko] = None
        for dep in _modinfo_depends(ko):
            if _norm(dep) in index:
                todo.append(index[_norm(dep)])
    return sorted(seen)


class _Cpio:
    """A cpio archive in the ``newc`` format (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def add_tree(self, src: Path) -> None:
        """Add ``src``'s contents as the archive root (directories before their entries)."""
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            base = Path(dirpath)
            for name in [*dirnames, *sorted(filenames)]:
                path = base / name
                arcname = str(path.relative_to(src))
                st = path.lstat()
                if stat.S_ISDIR(st.st_mode):
                    self._entry(arcname, stat.S_IFDIR | 0o755, nlink=2)
                elif stat.S_ISLNK(st.st_mode):
                    self._entry(arcname, stat.S_IFLNK | 0o777, os.readlink(path).encode())
                else:
                    self._entry(arcname, stat.S_IFREG | (st.st_mode & 0o777), path.read_bytes())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(
    dest: Path,
    *,
    assets: GuestAssets,
    init_script: str = INIT_SCRIPT,
    boot_modules: Sequence[str] = BOOT_MODULES,
    extra_files: Mapping[str, bytes] | None = None,
    gzip_level: int | None = None,
) -> Path:
    """Write an initramfs (busybox, the staged modules, ``/init``) to ``dest`` atomically.

    ``extra_files`` maps archive paths (``etc/foo``) to contents. ``gzip_level`` compresses.
    """
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".stage-") as tmp:
        stage = Path(tmp)
        for d in ("bin", "sbin", "etc/modprobe.d", "proc", "sys", "dev", "tmp", "usr/bin",
                  "usr/sbin", "lib/modules"):
            (stage / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(assets.busybox, stage / "bin/busybox")
        shutil.copytree(assets.modules_dir, stage / "lib/modules" / assets.kernel_version,
                        symlinks=True)
        (stage / "etc/modprobe.d/vnet.conf").write_text(MODPROBE_CONF)
        (stage / "etc/vnet-boot-modules").write_text("\n".join(boot_modules) + "\n")
        udhcpc = stage / "etc/udhcpc/default.script"
        udhcpc.parent.mkdir(parents=True)
        udhcpc.write_text(UDHCPC_SCRIPT)
        udhcpc.chmod(0o755)
        init = stage / "init"
        init.write_text(init_script)
        init.chmod(0o755)
        for name, content in (extra_files or {}).items():
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        archive = _Cpio()
        archive.add_tree(stage)
        data = archive.finish()
    if gzip_level is not None:
        import gzip

        data = gzip.compress(data, compresslevel=gzip_level, mtime=0)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, dest)
    return dest


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _modules_digest() -> str:
    return _digest(*BOOT_MODULES, "--", *EXTRA_MODULE_GLOBS, "v1")


def _assets_at(root: Path, version: str) -> GuestAssets:
    mdigest = _modules_digest()
    digest = _digest(mdigest, Path(__file__).read_text())  # any change here rebuilds it (~2 s)
    return GuestAssets(
        kernel_version=version,
        root=root,
        vmlinux=root / "vmlinux",
        bzimage=root / "vmlinuz",
        initramfs=root / f"initramfs-{digest}.cpio",
        initramfs_gz=root / f"initramfs-{digest}.cpio.gz",
        modules_dir=root / f"modroot-{mdigest}" / "lib" / "modules" / version,
        busybox=root / "busybox",
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _building(dest: Path) -> Iterator[Path]:
    """A temporary directory next to ``dest``, renamed to ``dest`` if the block succeeds."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
    try:
        yield tmp
        tmp.chmod(0o755)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_kernel_dir(package: str, version: str, dest: Path) -> None:
    """Download the kernel and busybox packages, extract vmlinux and busybox into ``dest``."""
    with _building(dest) as tmp:
        debs = tmp / "debs"
        debs.mkdir()
        debs.chmod(0o777)  # lets apt's sandbox user write there (no "unsandboxed" warning)
        _run("apt-get", "download", "-q", package, "busybox-static", cwd=debs)
        with tempfile.TemporaryDirectory(dir=tmp) as unpacked:
            for deb in sorted(debs.glob("busybox-static_*.deb")):
                _run("dpkg-deb", "-x", str(deb), unpacked)
            shutil.copy2(Path(unpacked) / "bin" / "busybox", tmp / "busybox")
        with tempfile.TemporaryDirectory(dir=tmp) as unpacked:
            _run("dpkg-deb", "-x", str(_kernel_deb(tmp, package)), unpacked)
            image = Path(unpacked) / "boot" / f"vmlinuz-{version}"
            shutil.copy2(image, tmp / "vmlinuz")
        (tmp / "vmlinux").write_bytes(_extract_vmlinux((tmp / "vmlinuz").read_bytes()))
        (tmp / "PACKAGE").write_text(package + "\n")


def _kernel_deb(kroot: Path, package: str) -> Path:
    found = sorted((kroot / "debs").glob(f"{package}_*.deb"))
    if not found:
        raise GuestError(f"no {package} package in {kroot / 'debs'}")
    return found[-1]


def _build_modules(kroot: Path, package: str, version: str, dest_modroot: Path) -> None:
    """Stage the needed modules (dependencies included) of the kernel package, depmod them."""
    with _building(dest_modroot) as tmp, tempfile.TemporaryDirectory(dir=kroot) as unpacked:
        _run("dpkg-deb", "-x", str(_kernel_deb(kroot, package)), unpacked)
        kdir = Path(unpacked) / "lib" / "modules" / version
        if not kdir.is_dir():
            kdir = Path(unpacked) / "usr" / "lib" / "modules" / version
        extra = [p for pattern in EXTRA_MODULE_GLOBS for p in sorted(kdir.glob(pattern))]
        staged = tmp / "lib" / "modules" / version
        for ko in _module_closure(kdir, BOOT_MODULES, extra):
            target = staged / ko.relative_to(kdir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ko, target)
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (kdir / name).exists():
                shutil.copy2(kdir / name, staged / name)
        _run(str(kroot / "busybox"), "depmod", "-b", str(tmp), version)
        if not (staged / "modules.alias").exists():
            raise GuestError(f"busybox depmod wrote no modules.alias in {staged}")


def prepare_assets(root: Path = ASSET_ROOT) -> GuestAssets:
    """Fetch and build (once, cached) the guest kernel, modules, busybox and initramfs.

    Safe to call concurrently (a lock serialises builders) and after an interrupted build
    (every piece appears by an atomic rename, leftovers are removed under the lock).
    """
    with _locked(root / ".lock"):
        for stale in [*root.glob(".tmp-*"), *root.glob("*/.tmp-*"), *root.glob("*/.stage-*"),
                      *root.glob("*/.*.part")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        try:
            package = kernel_package()
        except GuestError:
            cached = sorted(p for p in root.iterdir() if (p / "PACKAGE").exists())
            if not cached:
                raise
            package = (cached[-1] / "PACKAGE").read_text().strip()
        version = package.removeprefix("linux-image-")
        kroot = root / version
        if kroot.exists() and not list((kroot / "debs").glob(f"{package}_*.deb")):
            stale = root / f".tmp-old-{version}-{os.getpid()}"  # an older layout: rebuild
            kroot.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        if not kroot.exists():
            _build_kernel_dir(package, version, kroot)
        assets = _assets_at(kroot, version)
        modroot = assets.modules_dir.parents[2]
        if not modroot.exists():
            _build_modules(kroot, package, version, modroot)
        if not assets.initramfs.exists():
            build_initramfs(assets.initramfs, assets=assets)
        if not assets.initramfs_gz.exists():
            build_initramfs(assets.initramfs_gz, assets=assets, gzip_level=6)
        _prune(kroot, keep={assets.initramfs, assets.initramfs_gz, modroot})
        return assets


def _prune(kroot: Path, keep: set[Path], min_age: float = 3600) -> None:
    """Remove initramfs files and module trees of other recipes built over ``min_age`` s ago."""
    now = time.time()
    for path in [*kroot.glob("initramfs-*"), *kroot.glob("modroot-*")]:
        if path not in keep and now - path.stat().st_mtime > min_age:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# --- running a guest ----------------------------------------------------------------------


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def kvm_usable() -> bool:
    """True only with a real KVM module (kvm_intel/kvm_amd) and not kvm_pvm (TESTBED.md)."""
    mods = Path("/sys/module")
    real = (mods / "kvm_intel").exists() or (mods / "kvm_amd").exists()
    return real and not (mods / "kvm_pvm").exists() and os.access("/dev/kvm", os.R_OK | os.W_OK)


def guest_command(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> str:
    """The shell line run inside the chroot: a clean environment, ``cwd``, then ``argv``."""
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    return f"cd {shlex.quote(str(cwd))} && exec env -i {env_args} {shlex.join(argv)}"


def run_in_guest(
    argv: Sequence[str],
    *,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    assets: GuestAssets | None = None,
    memory_mb: int = 1024,
    cpus: int = 2,
) -> GuestResult:
    """Boot one guest, run ``argv`` in the chrooted host root, return its exit code and output."""
    assets = assets or prepare_assets()
    full_env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
        "/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "VNET_IN_GUEST": "1",
        **{k: v for k, v in os.environ.items() if k in PASS_ENV},
        **(env or {}),
    }
    accel = "kvm" if kvm_usable() else "tcg"
    with tempfile.TemporaryDirectory(prefix="vnet-guest-run-") as tmp:
        work = Path(tmp)
        (work / "init.sh").write_text(CHROOT_SCRIPT.replace("__MARKER__", RC_MARKER))
        (work / "cmd.sh").write_text(guest_command(argv, cwd=cwd, env=full_env))
        console, output = work / "console.log", work / "output.log"
        cmd = [
            QEMU, "-accel", accel, "-machine", "pc", "-cpu", "max" if accel == "tcg" else "host",
            "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none",
            "-kernel", str(assets.vmlinux), "-initrd", str(assets.initramfs),
            "-append", "console=ttyS0 panic=-1 quiet mitigations=off",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-chardev", f"file,id=out,path={output}", "-serial", "chardev:out",
            "-device", "virtio-rng-pci",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "-fw_cfg", f"name=opt/vnet/init,file={work / 'init.sh'}",
            "-fw_cfg", f"name=opt/vnet/cmd,file={work / 'cmd.sh'}",
        ]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as err:
            raise GuestError(f"cannot start {QEMU}: {err}") from err
        timed_out = False
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()  # by PID: the process we started
            qemu_out, _ = proc.communicate()
        seconds = time.monotonic() - start
        text = output.read_bytes().decode(errors="replace").replace("\r\n", "\n")
        console_text = console.read_bytes().decode(errors="replace").replace("\r\n", "\n")
        if qemu_out:
            console_text += "\n--- qemu ---\n" + qemu_out.decode(errors="replace")
    returncode: int | None = None
    lines = text.rstrip("\n").split("\n")
    if lines and lines[-1].startswith(RC_MARKER):
        returncode = int(lines[-1][len(RC_MARKER):])
        text = "\n".join(lines[:-1]) + "\n"
    return GuestResult(returncode, text, console_text, seconds, timed_out)


def run_pytest_in_guest(
    pytest_args: Sequence[str], *, timeout: float = 300, env: Mapping[str, str] | None = None
) -> GuestResult:
    """Run the venv's pytest with ``pytest_args`` from the repo root inside one guest.

    Hypothesis's pytest plugin is disabled: it alone costs ~7 s of start-up under TCG.
    """
    pytest = Path(sys.executable).parent / "pytest"
    argv = [str(pytest), "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *pytest_args]
    return run_in_guest(argv, cwd=REPO, env=env, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--run" in argv:  # everything after --run (and an optional --) is the guest command
        at = argv.index("--run")
        argv, command = [*argv[:at], "--run"], argv[at + 1 :]
        command = command[1:] if command[:1] == ["--"] else command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prepare", action="store_true", help="fetch and build the assets")
    group.add_argument("--run", action="store_true", help="--run CMD ARGS...: run in a guest")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            assets = prepare_assets()
            for field, value in vars(assets).items():
                print(f"{field}: {value}")
            return 0
        result = run_in_guest(command or ["uname", "-a"], timeout=args.timeout)
    except GuestError as err:
        print(f"guestvm: {err}", file=sys.stderr)
        return 1
    print(result.describe())
    return result.returncode if result.returncode is not None else 1


if __name__ == "__main__":
    sys.exit(main())
