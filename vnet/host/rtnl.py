"""A small rtnetlink codec for the two hot paths of reconciling thousands of ports.

Why not pyroute2 here: measured in a netns with 1,000 TAPs on one bridge, pyroute2 took 0.19 s
to dump the links and 0.2 ms per message to encode (0.2 s for 1,000 ``link set``); this codec
dumps them in ~0.02 s and encodes 1,000 messages in ~2 ms, sending them pipelined (one ACK
read pass). Everything else (creating bridges, bonds, VLANs, macvtaps, veths, addresses,
bridge VLANs) goes through pyroute2 in ``vnet.host.netlink``.

It only speaks to the kernel of the calling thread's network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP_INTR = 0x10
DUMP_TRIES = 5
RTNLGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_GROUP = 27
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2

_HDR = struct.Struct("=IHHII")
_IFA = struct.Struct("=BBBBI")
_IFI = struct.Struct("=BxHiII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")

# IFLA_INFO_DATA attributes we read, per kind: name -> (type number, format)
_DATA_ATTRS: dict[str, dict[int, tuple[str, str]]] = {
    "bridge": {5: ("stp_state", "I"), 7: ("vlan_filtering", "B")},
    "bond": {1: ("mode", "B"), 3: ("miimon", "I")},
    "vlan": {1: ("vlan_id", "H")},
    "macvtap": {1: ("macvlan_mode", "I")},
    "macvlan": {1: ("macvlan_mode", "I")},
    "tun": {1: ("owner", "I"), 2: ("group", "I"), 3: ("type", "B"), 5: ("vnet_hdr", "B"),
            6: ("persist", "B"), 7: ("multi_queue", "B")},
}


SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1


class NetlinkError(OSError):
    """An NLMSG_ERROR answer; ``index`` is the position of the request in its batch and
    ``detail`` the kernel's extended-ACK message, when it gave one."""

    def __init__(self, code: int, index: int, detail: str = "") -> None:
        super().__init__(code, os.strerror(code) + (f" ({detail})" if detail else ""))
        self.index = index
        self.detail = detail


@dataclass
class RawLink:
    index: int
    ifname: str
    flags: int
    mtu: int = 0
    mac: str = ""
    master: int = 0
    link: int = 0
    group: int = 0
    alias: str | None = None
    kind: str = ""
    data: dict[str, int] = field(default_factory=dict)


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


def _iter_attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        length, kind = _ATTR.unpack_from(buf, off)
        if length < 4:
            return
        yield kind & 0x3FFF, off + 4, off + length
        off += (length + 3) & ~3


def _cstr(buf: bytes, start: int, end: int) -> str:
    return buf[start:end].split(b"\0", 1)[0].decode("utf-8", "replace")


class Rtnl:
    """One NETLINK_ROUTE socket: pipelined requests and a fast link dump."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        # The kernel's reason in words ("Device can not be enslaved while up"), not only errno;
        # and errors that do not echo the whole request back.
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self.sock.bind((0, 0))
        self._seq = 0
        self.details: dict[int, str] = {}  # request index -> kernel message, of the last batch

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------
    @staticmethod
    def setlink_message(
        ifname: str,
        *,
        up: bool | None = None,
        master: int | None = None,
        group: int | None = None,
        alias: str | None = None,
        mtu: int | None = None,
    ) -> tuple[int, bytes]:
        """Body of an RTM_NEWLINK that changes an existing link found by name."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFI.pack(socket.AF_UNSPEC, 0, 0, flags, change)
        body += _attr(IFLA_IFNAME, ifname.encode() + b"\0")
        if master is not None:
            body += _attr(IFLA_MASTER, _U32.pack(master))
        if group is not None:
            body += _attr(IFLA_GROUP, _U32.pack(group))
        if alias is not None:
            body += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
        if mtu is not None:
            body += _attr(IFLA_MTU, _U32.pack(mtu))
        return RTM_NEWLINK, body

    @staticmethod
    def delgroup_message(group: int) -> tuple[int, bytes]:
        """RTM_DELLINK of every link in ``group`` (one kernel batch: fast unregister)."""
        return RTM_DELLINK, _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
            IFLA_GROUP, _U32.pack(group)
        )

    @staticmethod
    def bury_message(index: int, new_name: str, group: int, alias: str) -> tuple[int, bytes]:
        """RTM_NEWLINK that takes a link out of service at once: down, off its bridge, renamed
        and put in ``group`` (deleting it costs the kernel ~16 ms; a group goes in one call)."""
        body = _IFI.pack(socket.AF_UNSPEC, 0, index, 0, IFF_UP)
        body += _attr(IFLA_IFNAME, new_name.encode() + b"\0")
        body += _attr(IFLA_MASTER, _U32.pack(0))
        body += _attr(IFLA_GROUP, _U32.pack(group))
        body += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
        return RTM_NEWLINK, body

    @staticmethod
    def dellink_message(ifname: str) -> tuple[int, bytes]:
        return RTM_DELLINK, _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
            IFLA_IFNAME, ifname.encode() + b"\0"
        )

    def request_many(self, requests: Iterable[tuple[int, bytes]], extra_flags: int = 0) -> list[int]:
        """Send requests pipelined (ACK each); return the errno of each (0 = success)."""
        reqs = list(requests)
        if not reqs:
            return []
        first = self._seq + 1
        self.details = {}
        chunk: list[bytes] = []
        size = 0
        results = [-1] * len(reqs)
        pending = 0
        for i, (msg_type, body) in enumerate(reqs):
            self._seq += 1
            msg = _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | extra_flags,
                            self._seq, 0)
            chunk.append(msg + body)
            size += len(msg) + len(body)
            pending += 1
            # Bounded in-flight requests so ACKs never overflow the receive buffer.
            if size > 32768 or pending >= 512:
                self.sock.send(b"".join(chunk))
                chunk, size = [], 0
                self._read_acks(first, results, pending_until=i + 1)
                pending = 0
        if chunk:
            self.sock.send(b"".join(chunk))
        self._read_acks(first, results, pending_until=len(reqs))
        return results

    def _read_acks(self, first: int, results: list[int], pending_until: int) -> None:
        while any(r < 0 for r in results[:pending_until]):
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                length, msg_type, flags, seq, _pid = _HDR.unpack_from(data, off)
                if msg_type == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, off + _HDR.size)[0]
                    idx = seq - first
                    if 0 <= idx < len(results):
                        results[idx] = -code
                        if code and flags & NLM_F_ACK_TLVS:
                            detail = _ack_message(data, off, length, flags)
                            if detail:
                                self.details[idx] = detail
                off += (length + 3) & ~3
                if length == 0:
                    break

    def request(self, msg_type: int, body: bytes) -> None:
        """One request; raise NetlinkError on failure."""
        code = self.request_many([(msg_type, body)])[0]
        if code:
            raise NetlinkError(code, 0, self.details.get(0, ""))

    def newlink(self, ifname: str, kind: str, *, link: int | None = None,
                data: bytes = b"", peer: str | None = None) -> None:
        """Create a link of ``kind`` (the capability probes use this; no pyroute2 import)."""
        body = _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, ifname.encode() + b"\0")
        if link is not None:
            body += _attr(IFLA_LINK, _U32.pack(link))
        if peer is not None:  # veth: VETH_INFO_PEER carries the peer's ifinfomsg + attributes
            data = _attr(1, _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                         + _attr(IFLA_IFNAME, peer.encode() + b"\0"))
        info = _attr(IFLA_INFO_KIND, kind.encode() + b"\0")
        if data:
            info += _attr(IFLA_INFO_DATA, data)
        body += _attr(IFLA_LINKINFO, info)
        code = self.request_many([(RTM_NEWLINK, body)], NLM_F_CREATE | NLM_F_EXCL)[0]
        if code:
            raise NetlinkError(code, 0, self.details.get(0, ""))


    def get_links(self, names: Iterable[str]) -> list[RawLink]:
        """The links with these names (pipelined RTM_GETLINK by name); missing ones are left out."""
        wanted = list(names)
        first = self._seq + 1
        for name in wanted:
            self._seq += 1
            body = (_IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
                    + _attr(IFLA_EXT_MASK, _U32.pack(0)))
            self.sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, self._seq, 0)
                           + body)
        out: list[RawLink] = []
        answered = 0
        while answered < len(wanted):
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                length, msg_type, _flags, seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise NetlinkError(errno.EPROTO, 0)
                if first <= seq <= self._seq:
                    if msg_type == RTM_NEWLINK:
                        out.append(_parse_link(data, off + _HDR.size, off + length))
                        answered += 1
                    elif msg_type == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        if code not in (0, errno.ENODEV):
                            raise NetlinkError(code, seq - first)
                        answered += 1
                off += (length + 3) & ~3
        return out

    # -- dumps -------------------------------------------------------------------------------
    def dump_links(self) -> list[RawLink]:
        body = _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_EXT_MASK, _U32.pack(0))
        return [_parse_link(buf, start, end) for buf, start, end in self._dump(RTM_GETLINK, body)
                if _HDR.unpack_from(buf, start - _HDR.size)[1] == RTM_NEWLINK]

    def dump_ipv4_addresses(self) -> list[tuple[int, str, int]]:
        """(ifindex, address, prefix length) of every IPv4 address."""
        out = []
        for buf, start, end in self._dump(RTM_GETADDR, _IFA.pack(socket.AF_INET, 0, 0, 0, 0)):
            family, prefixlen, _flags, _scope, index = _IFA.unpack_from(buf, start)
            if family != socket.AF_INET:
                continue
            found: dict[int, str] = {}
            for kind, a, b in _iter_attrs(buf, start + _IFA.size, end):
                if kind in (IFA_ADDRESS, IFA_LOCAL) and b - a == 4:
                    found[kind] = socket.inet_ntoa(buf[a:b])
            addr = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if addr:
                out.append((index, addr, prefixlen))
        return out

    def _dump(self, msg_type: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """(buffer, payload start, payload end) of each message a dump request returns.

        A dump the kernel marks interrupted (``NLM_F_DUMP_INTR``: the table changed while it
        was read, so some entries may be missing or stale) is read again, up to DUMP_TRIES.
        """
        for _ in range(DUMP_TRIES - 1):
            parts, interrupted = self._dump_once(msg_type, body)
            if not interrupted:
                return parts
        parts, interrupted = self._dump_once(msg_type, body)
        if interrupted:
            raise NetlinkError(errno.EAGAIN, 0, f"dump interrupted {DUMP_TRIES} times in a row")
        return parts

    def _dump_once(self, msg_type: int, body: bytes) -> tuple[list[tuple[bytes, int, int]], bool]:
        self._seq += 1
        seq = self._seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), msg_type,
                                 NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        parts: list[tuple[bytes, int, int]] = []
        interrupted = False
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                length, msg_type, flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise NetlinkError(errno.EPROTO, 0)
                if mseq == seq:
                    interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if msg_type == NLMSG_DONE:
                        return parts, interrupted
                    if msg_type == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, off + _HDR.size)[0]
                        raise NetlinkError(-code, 0)
                    parts.append((data, off + _HDR.size, off + length))
                off += (length + 3) & ~3


def _parse_link(buf: bytes, off: int, end: int) -> RawLink:
    _family, _type, index, flags, _change = _IFI.unpack_from(buf, off)
    link = RawLink(index=index, ifname="", flags=flags)
    for kind, start, stop in _iter_attrs(buf, off + _IFI.size, end):
        if kind == IFLA_IFNAME:
            link.ifname = _cstr(buf, start, stop)
        elif kind == IFLA_MTU:
            link.mtu = _U32.unpack_from(buf, start)[0]
        elif kind == IFLA_ADDRESS:
            link.mac = ":".join(f"{b:02x}" for b in buf[start:stop])
        elif kind == IFLA_MASTER:
            link.master = _U32.unpack_from(buf, start)[0]
        elif kind == IFLA_LINK:
            link.link = _U32.unpack_from(buf, start)[0]
        elif kind == IFLA_GROUP:
            link.group = _U32.unpack_from(buf, start)[0]
        elif kind == IFLA_IFALIAS:
            link.alias = _cstr(buf, start, stop) or None
        elif kind == IFLA_LINKINFO:
            _parse_linkinfo(buf, start, stop, link)
    return link


def _parse_linkinfo(buf: bytes, off: int, end: int, link: RawLink) -> None:
    data_span: tuple[int, int] | None = None
    for kind, start, stop in _iter_attrs(buf, off, end):
        if kind == IFLA_INFO_KIND:
            link.kind = _cstr(buf, start, stop)
        elif kind == IFLA_INFO_DATA:
            data_span = (start, stop)
    wanted = _DATA_ATTRS.get(link.kind)
    if data_span is None or wanted is None:
        return
    for kind, start, _stop in _iter_attrs(buf, *data_span):
        if kind in wanted:
            name, fmt = wanted[kind]
            link.data[name] = struct.unpack_from("=" + fmt, buf, start)[0]


def u8_attr(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=B", value))


def u16_attr(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=H", value))


def _ack_message(data: bytes, off: int, length: int, flags: int) -> str:
    """NLMSGERR_ATTR_MSG of an extended ACK, if present."""
    inner = off + _HDR.size + 4  # after the error code: the request's header (and body)
    if inner + _HDR.size > off + length:
        return ""
    req_len = _HDR.unpack_from(data, inner)[0]
    tlvs = inner + (_HDR.size if flags & NLM_F_CAPPED else (req_len + 3) & ~3)
    for kind, start, stop in _iter_attrs(data, tlvs, off + length):
        if kind == NLMSGERR_ATTR_MSG:
            return _cstr(data, start, stop)
    return ""


class LinkEvents:
    """Link change notifications (RTNLGRP_LINK) of this network namespace.

    ``read()`` returns the ("new" | "del", RawLink) pairs queued now, or None when the socket
    overflowed (ENOBUFS: events were lost, the caller must resync in full).
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 1 << (RTNLGRP_LINK - 1)))
        self.sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> list[tuple[str, RawLink]] | None:
        """Everything queued now (non-blocking); None after an overflow."""
        out: list[tuple[str, RawLink]] = []
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    return None
                raise
            off = 0
            while off + _HDR.size <= len(data):
                length, msg_type, _flags, _seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if msg_type in (RTM_NEWLINK, RTM_DELLINK):
                    link = _parse_link(data, off + _HDR.size, off + length)
                    kind = "new" if msg_type == RTM_NEWLINK else "del"
                    out.append((kind, link))
                off += (length + 3) & ~3
