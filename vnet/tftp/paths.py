"""Resolve a TFTP file name strictly inside the served root, and open it read-only.

``check_name`` is pure (the lexical rules); ``open_in_root`` reads the file system but sends
nothing. Refused: empty names, absolute paths, ``..`` components, NUL and other control bytes,
symlinks whose target leaves the root, anything that is not a regular file (devices, FIFOs,
sockets, directories). Symlinks that stay inside the root are followed. After opening, the
descriptor's real path is checked again, so a component swapped for a symlink between the
check and the open cannot lead outside.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vnet.tftp.packet import ErrorCode


class Refused(Exception):
    """A request the server answers with a TFTP ERROR packet (``code``, ``message``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OpenFile:
    fd: int
    size: int
    path: str


def check_name(filename: str) -> tuple[str, ...]:
    """The path components of ``filename`` relative to the root, or Refused."""
    if not filename:
        raise Refused(ErrorCode.FILE_NOT_FOUND, "empty file name")
    if any(ord(c) < 0x20 or c == "\x7f" for c in filename):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "control character in file name")
    if filename.startswith("/"):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "absolute paths are not served")
    parts = tuple(p for p in filename.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused(ErrorCode.ACCESS_VIOLATION, "'..' is not allowed in file names")
    if not parts:
        raise Refused(ErrorCode.FILE_NOT_FOUND, f"{filename!r} names the root directory")
    return parts


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def open_in_root(root: Path, filename: str) -> OpenFile:
    """Open ``filename`` below ``root`` for reading; the caller closes ``fd``."""
    parts = check_name(filename)
    try:
        real_root = os.path.realpath(root, strict=True)
    except OSError as err:
        raise Refused(ErrorCode.FILE_NOT_FOUND, "the TFTP root does not exist") from err
    target = os.path.realpath(os.path.join(real_root, *parts))
    if not _inside(target, real_root):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "path leaves the TFTP root")
    try:
        before = os.stat(target)
    except FileNotFoundError as err:
        raise Refused(ErrorCode.FILE_NOT_FOUND, "file not found") from err
    except OSError as err:
        raise Refused(ErrorCode.ACCESS_VIOLATION, f"cannot read file: {err.strerror}") from err
    if not stat.S_ISREG(before.st_mode):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(target, flags)
    except OSError as err:
        raise Refused(ErrorCode.ACCESS_VIOLATION, f"cannot open file: {err.strerror}") from err
    try:
        st = os.fstat(fd)
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if not stat.S_ISREG(st.st_mode) or not _inside(opened, real_root):
            raise Refused(ErrorCode.ACCESS_VIOLATION, "path leaves the TFTP root")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return OpenFile(fd, st.st_size, opened)
