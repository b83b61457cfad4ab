"""``vnet hook ...``: what QEMU's ``script=`` and libvirt's ``qemu.d`` run. One bounded API call.

    vnet hook qemu-ifup IFNAME       QEMU -netdev tap,ifname=IF,script=S (S runs this)
    vnet hook qemu-ifdown IFNAME     QEMU downscript=D
    vnet hook libvirt GUEST OP SUBOP EXTRA   (domain XML on stdin)

Each forwards what it was given to the daemon (``RUN_DIR/vnet.sock``, ``VNET_RUN_DIR``) and
exits 0 when the daemon did it, else 1 with ONE line on stderr (QEMU then fails the netdev,
libvirt the start). It never touches the kernel, never calls libvirt (that would deadlock
libvirtd), never runs a shell, and gives up after ``VNET_HOOK_TIMEOUT`` seconds (default 1.8,
so libvirt hears back within 2 s). Checking the input is the daemon's job (``vnet.hookargs``):
this process stays small because one runs per guest start (imports: stdlib + httpclient).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vnet.errors import ApiError
from vnet.httpclient import call_json

MAX_XML = 4 << 20  # the daemon refuses more (vnet.hookargs.MAX_XML)
# libvirt operations vnet acts on; every other one exits 0 at once, daemon or not.
LIBVIRT_OPS = {("prepare", "begin"), ("release", "end"), ("reconnect", "begin"),
               ("attach", "begin"), ("migrate", "begin")}
VNET_XMLNS = "http://vnet.dev/xmlns/libvirt/1"
USAGE = ("usage: vnet hook qemu-ifup IFNAME | qemu-ifdown IFNAME | "
         "libvirt GUEST OP SUBOP EXTRA (domain XML on stdin)")


def _socket() -> Path:
    return Path(os.environ.get("VNET_RUN_DIR", "/run/vnet")) / "vnet.sock"


def _timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("VNET_HOOK_TIMEOUT", "1.8")))
    except ValueError:
        return 1.8


def _fail(kind: str, message: str) -> int:
    line = " ".join(message.split())  # one line, whatever the message held
    sys.stderr.write(f"vnet hook {kind}: {line}\n")
    return 1


def qemu(kind: str, args: Sequence[str]) -> int:
    if len(args) != 1:
        return _fail(kind, f"QEMU passes exactly one argument (the TAP name), got {len(args)}")
    call_json(_socket(), "POST", "/v1/hooks/qemu",
              {"action": kind.removeprefix("qemu-"), "ifname": args[0]}, timeout=_timeout())
    return 0


def libvirt(args: Sequence[str]) -> int:
    data = sys.stdin.buffer.read(MAX_XML + 1)  # libvirt writes the XML: always drain it
    if len(args) != 4:
        return _fail("libvirt", f"libvirt passes GUEST OP SUBOP EXTRA, got {len(args)} arguments")
    if (args[1], args[2]) not in LIBVIRT_OPS:
        return 0
    if len(data) > MAX_XML:
        return _fail("libvirt", f"domain XML is larger than {MAX_XML} bytes")
    try:
        xml = data.decode()
    except UnicodeDecodeError as err:
        return _fail("libvirt", f"domain XML is not UTF-8 (byte {err.start})")
    try:
        reply = call_json(_socket(), "POST", "/v1/hooks/libvirt", {"argv": list(args), "xml": xml},
                          timeout=_timeout())
    except ApiError as err:
        if "no vnet daemon" in str(err) and VNET_XMLNS not in xml:
            return 0  # not ours, and nothing to undo: never block a guest vnet does not serve
        raise
    # migrate begin: nothing on stdout means libvirt uses its XML unchanged
    if os.environ.get("VNET_HOOK_VERBOSE"):
        sys.stderr.write(json.dumps(reply) + "\n")
    return 0


def main(argv: Sequence[str]) -> int:
    if not argv:
        return _fail("", USAGE)
    kind, args = argv[0], argv[1:]
    try:
        if kind in ("qemu-ifup", "qemu-ifdown"):
            return qemu(kind, args)
        if kind == "libvirt":
            return libvirt(args)
    except ApiError as err:
        return _fail(kind, str(err))
    except (OSError, ValueError) as err:
        return _fail(kind, f"{type(err).__name__}: {err}")
    return _fail(kind, f"unknown hook {kind!r}; {USAGE}")
