"""Requests resolve strictly inside the TFTP root; everything else is refused with a TFTP error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vnet.tftp.options import Limits
from vnet.tftp.packet import ErrorCode, Opcode, encode_request
from vnet.tftp.paths import Refused, open_in_root
from vnet.tftp.session import accept


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside.txt").write_text("secret")
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "ipxe.efi").write_bytes(b"EFI")
    (root / "pxelinux.0").write_bytes(b"PXE")
    (root / "alias").symlink_to("boot/ipxe.efi")
    (root / "bootdir").symlink_to("boot")
    (root / "escape").symlink_to(tmp_path / "outside.txt")
    (root / "escape-rel").symlink_to("../outside.txt")
    (root / "etc").symlink_to("/etc")
    os.mkfifo(root / "fifo")
    return root


def read(root: Path, name: str) -> bytes:
    opened = open_in_root(root, name)
    try:
        return os.read(opened.fd, 100)
    finally:
        os.close(opened.fd)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pxelinux.0", b"PXE"),
        ("boot/ipxe.efi", b"EFI"),
        ("./boot//ipxe.efi", b"EFI"),
        ("alias", b"EFI"),  # a symlink that stays inside
        ("bootdir/ipxe.efi", b"EFI"),
    ],
)
def test_files_inside_the_root_are_served(root: Path, name: str, content: bytes) -> None:
    assert read(root, name) == content


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../outside.txt", ErrorCode.ACCESS_VIOLATION),
        ("boot/../../outside.txt", ErrorCode.ACCESS_VIOLATION),
        ("..", ErrorCode.ACCESS_VIOLATION),
        ("/etc/passwd", ErrorCode.ACCESS_VIOLATION),
        ("escape", ErrorCode.ACCESS_VIOLATION),
        ("escape-rel", ErrorCode.ACCESS_VIOLATION),
        ("etc/passwd", ErrorCode.ACCESS_VIOLATION),
        ("boot\x00/../../outside.txt", ErrorCode.ACCESS_VIOLATION),
        ("pxe\nlinux.0", ErrorCode.ACCESS_VIOLATION),
        ("fifo", ErrorCode.ACCESS_VIOLATION),
        ("boot", ErrorCode.ACCESS_VIOLATION),
        (".", ErrorCode.FILE_NOT_FOUND),
        ("", ErrorCode.FILE_NOT_FOUND),
        ("missing.bin", ErrorCode.FILE_NOT_FOUND),
    ],
)
def test_everything_else_is_refused(root: Path, name: str, code: ErrorCode) -> None:
    with pytest.raises(Refused) as info:
        open_in_root(root, name)
    assert info.value.code == code


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_files_are_refused(root: Path) -> None:
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(Refused, match="not a regular file"):
        open_in_root(root, "null")


def test_missing_root_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(Refused) as info:
        open_in_root(tmp_path / "nope", "x")
    assert info.value.code == ErrorCode.FILE_NOT_FOUND


def test_write_requests_are_refused(root: Path) -> None:
    with pytest.raises(Refused, match="read-only") as info:
        accept(encode_request(Opcode.WRQ, "new.bin"), root, Limits())
    assert info.value.code == ErrorCode.ACCESS_VIOLATION


def test_unknown_transfer_modes_are_refused(root: Path) -> None:
    with pytest.raises(Refused, match="mode 'mail'"):
        accept(encode_request(Opcode.RRQ, "pxelinux.0", "mail"), root, Limits())


def test_a_nul_inside_the_name_never_reaches_the_file_system(root: Path) -> None:
    raw = b"\x00\x01pxelinux.0\x00../../outside.txt\x00octet\x00"
    with pytest.raises(Refused) as info:
        accept(raw, root, Limits())
    assert info.value.code == ErrorCode.ILLEGAL_OPERATION


def test_accepted_read_has_its_file_open(root: Path) -> None:
    accepted = accept(encode_request(Opcode.RRQ, "boot/ipxe.efi", options=(("tsize", "0"),)),
                      root, Limits())
    try:
        assert accepted.file.size == 3
        assert accepted.transfer.start(0.0) == [b"\x00\x06tsize\x003\x00"]
    finally:
        os.close(accepted.file.fd)
