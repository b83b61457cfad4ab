"""Answer IPv6 router solicitations on one link with a minimal router advertisement.

iPXE runs IPv6 autoconfiguration next to DHCP and waits ~16 s for a router advertisement
before it goes on (TESTBED.md, tier 2). An RA without prefixes, M/O flags or router lifetime
ends that wait at once and configures nothing. Raw Ethernet frames (AF_PACKET), so it works
with IPv6 disabled in the namespace. Test helper only:

    ip netns exec NS python -m integration.ra IFNAME

prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

ETH_P_IPV6 = 0x86DD
ICMPV6 = 58
RS, RA = 133, 134
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")  # iPXE drops an ff02::1 RA sent to its own MAC


def link_local(mac: bytes) -> bytes:
    eui = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    return bytes.fromhex("fe80000000000000") + eui


def checksum(src: bytes, dst: bytes, payload: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(payload), ICMPV6) + payload
    if len(pseudo) % 2:
        pseudo += b"\0"
    total: int = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def router_advertisement(mac: bytes) -> bytes:
    src = link_local(mac)
    # type, code, checksum, hop limit, flags (no M/O), router lifetime 0, reachable, retrans;
    # option 1: source link-layer address.
    body = struct.pack("!BBHBBHII", RA, 0, 0, 64, 0, 0, 0, 0) + bytes([1, 1]) + mac
    body = body[:2] + struct.pack("!H", checksum(src, ALL_NODES, body)) + body[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(body), ICMPV6, 255) + src + ALL_NODES
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + body


def is_solicitation(frame: bytes) -> bool:
    return (len(frame) > 54 and frame[12:14] == b"\x86\xdd" and frame[20] == ICMPV6
            and frame[54] == RS)


def main(argv: list[str]) -> int:
    ifname = argv[0]
    mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip()
                        .replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
    sock.bind((ifname, ETH_P_IPV6))
    print("ready", flush=True)
    while True:
        frame = sock.recv(2048)
        if is_solicitation(frame):
            sock.send(router_advertisement(mac))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
