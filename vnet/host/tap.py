"""Persistent TAP devices through /dev/net/tun ioctls (rtnetlink cannot create TAPs).

A persistent TAP outlives this process; QEMU later opens it with
``-netdev tap,ifname=X,script=no`` (as the owner/group set here, if any).
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFF_TUN_EXCL = 0x8000


def _flags(multi_queue: bool, vnet_hdr: bool) -> int:
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    return flags


def create_tap(ifname: str, *, owner: int | None, group: int | None, multi_queue: bool,
               vnet_hdr: bool) -> None:
    """Create a persistent TAP; OSError(EBUSY/EEXIST) if the name is taken."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        req = struct.pack("16sH", ifname.encode(), _flags(multi_queue, vnet_hdr) | IFF_TUN_EXCL)
        fcntl.ioctl(fd, TUNSETIFF, req)
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def set_tap_ids(ifname: str, *, owner: int | None, group: int | None, multi_queue: bool,
                vnet_hdr: bool) -> None:
    """Set the owner and/or group of an existing persistent TAP (None: leave as is).

    The kernel cannot unset them again (it refuses (uid_t)-1); the planner recreates the TAP.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(),
                                               _flags(multi_queue, vnet_hdr)))
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
    finally:
        os.close(fd)
