"""Kernel capability detection, before any change is made.

Each feature is probed for real in a throwaway network namespace (a forked child that
unshares its network namespace), so the probe cannot disturb the host and also works where
the feature is a loadable module the kernel would autoload. Results are cached per process.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

CLONE_NEWNET = 0x40000000

# feature -> what a user reads in the error message
FEATURES = {
    "vlan": "802.1Q VLAN devices (8021q)",
    "bond": "bonding",
    "bridge-vlan-filtering": "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
    "macvtap": "macvtap",
    "tun": "TUN/TAP (/dev/net/tun)",
    "veth": "veth",
}


def _probe_in_child(feature: str) -> bool:
    from vnet.host.netlink import probe_feature

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    return probe_feature(feature)


@cache
def has_feature(feature: str) -> bool:
    if feature == "tun":
        return os.path.exists("/dev/net/tun")
    pid = os.fork()
    if pid == 0:  # child: probe, report by exit code, never return into the caller
        code = 1
        try:
            code = 0 if _probe_in_child(feature) else 1
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
