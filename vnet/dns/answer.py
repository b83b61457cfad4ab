"""The answer function: query bytes + Zone -> reply bytes, or a request to forward.

:func:`handle` never raises: malformed input gets FORMERR (when it has a header to answer) or
nothing. Replies to queries from outside the network (``allowed=False``) are REFUSED, as are
names we are not authoritative for when no forwarder covers them: vnet is never an open
resolver. :func:`relay` turns an upstream answer (or its absence) into the client's reply.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSRecord

from vnet.dns.forward import Routes, Upstream
from vnet.dns.zone import Zone, fqdn

log = logging.getLogger(__name__)

MAX_UDP = 1232  # our EDNS0 UDP payload size (DNS flag day 2020)
TCP_LIMIT = 65535
MAX_CHAIN = 8
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_CLASS_IN, _CLASS_ANY = 1, 255
_BADVERS_EXT = 1  # extended RCODE 16 = (1 << 4) | 0


@dataclass(frozen=True)
class Reply:
    wire: bytes
    cacheable: bool  # depends only on the query bytes and the zone: safe to replay


@dataclass(frozen=True)
class Forward:
    request: DNSRecord
    upstreams: tuple[Upstream, ...]
    limit: int  # largest reply the client accepts


def header_only(data: bytes, rcode: int) -> bytes | None:
    """A reply with no sections to a query whose header is readable; None if it is not."""
    if len(data) < 12:
        return None
    qid, flags = _HEADER.unpack_from(data)[:2]
    if flags & _QR:
        return None
    flags = _QR | (flags & 0x7900) | rcode  # keep opcode and RD
    return _HEADER.pack(qid, flags, 0, 0, 0, 0)


def handle(data: bytes, zone: Zone, routes: Routes, *, allowed: bool, tcp: bool) -> (
    Reply | Forward | None
):
    """Answer one query message. None: send nothing (not a query, or too short to answer)."""
    if len(data) < 12 or _HEADER.unpack_from(data)[1] & _QR:
        return None
    try:
        request = DNSRecord.parse(data)
    except Exception:
        wire = header_only(data, RCODE.FORMERR)
        return Reply(wire, False) if wire is not None else None
    try:
        return _answer(request, zone, routes, allowed=allowed, tcp=tcp)
    except Exception:
        log.exception("DNS: failed to answer %r", data[:64])
        wire = header_only(data, RCODE.SERVFAIL)
        return Reply(wire, False) if wire is not None else None


def _limit(request: DNSRecord, tcp: bool) -> int:
    if tcp:
        return TCP_LIMIT
    opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
    return 512 if opt is None else max(512, min(int(opt.rclass), MAX_UDP))


def _reply(request: DNSRecord, rcode: int, *, aa: bool, ra: bool) -> DNSRecord:
    h = request.header
    reply = DNSRecord(
        DNSHeader(id=h.id, qr=1, opcode=h.opcode, aa=int(aa), rd=h.rd, ra=int(ra), rcode=rcode),
        q=request.q if request.questions else None,
    )
    opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=MAX_UDP, flags="do" if opt.ttl & 0x8000 else ""))
    return reply


def fit(reply: DNSRecord, limit: int) -> bytes:
    """Pack ``reply``; if it exceeds ``limit``, a TC reply with only question (+ OPT) instead."""
    wire = bytes(reply.pack())
    if len(wire) <= limit:
        return wire
    reply.header.tc = 1
    reply.rr, reply.auth = [], []
    reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return bytes(reply.pack())


def _answer(request: DNSRecord, zone: Zone, routes: Routes, *, allowed: bool, tcp: bool) -> (
    Reply | Forward
):
    ra = routes.any
    h = request.header
    if not allowed:
        return Reply(fit(_reply(request, RCODE.REFUSED, aa=False, ra=False), 512), False)
    if h.opcode != OPCODE.QUERY:
        return Reply(fit(_reply(request, RCODE.NOTIMP, aa=False, ra=ra), 512), True)
    opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
    if len(request.questions) != 1 or len(opts) > 1:
        return Reply(fit(_reply(request, RCODE.FORMERR, aa=False, ra=ra), 512), True)
    limit = _limit(request, tcp)
    if opts and (opts[0].ttl >> 16) & 0xFF != 0:
        reply = _reply(request, RCODE.NOERROR, aa=False, ra=ra)
        reply.ar = [EDNS0(udp_len=MAX_UDP, ext_rcode=_BADVERS_EXT)]
        return Reply(fit(reply, limit), True)
    q = request.q
    qname, qtype = fqdn(str(q.qname)), int(q.qtype)
    if q.qclass not in (_CLASS_IN, _CLASS_ANY) or qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return Reply(fit(_reply(request, RCODE.REFUSED, aa=False, ra=ra), limit), True)
    if qname in zone.rrsets or zone.apex_of(qname) is not None:
        reply = _reply(request, RCODE.NOERROR, aa=True, ra=ra)
        _lookup(zone, qname, qtype, reply)
        return Reply(fit(reply, limit), True)
    upstreams = routes.upstreams_for(qname)
    if not upstreams:
        return Reply(fit(_reply(request, RCODE.REFUSED, aa=False, ra=ra), limit), True)
    return Forward(request, upstreams, limit)


def _lookup(zone: Zone, qname: str, qtype: int, reply: DNSRecord) -> None:
    """Fill ``reply`` with our data for ``qname``: answers (following CNAMEs), or SOA + rcode."""
    name = qname
    for _ in range(MAX_CHAIN):
        sets = zone.rrsets.get(name)
        if sets is not None:
            if qtype == QTYPE.ANY:
                for rrs in sets.values():
                    reply.rr.extend(rrs)
                return
            if qtype in sets:
                reply.rr.extend(sets[qtype])
                _additional(zone, sets[qtype], reply)
                return
            if QTYPE.CNAME in sets:
                cname = sets[QTYPE.CNAME][0]
                reply.rr.append(cname)
                name = fqdn(str(cname.rdata.label))
                if name not in zone.rrsets and zone.apex_of(name) is None:
                    return  # the target is someone else's: the client's resolver follows it
                continue
            _negative(zone, name, reply)
            return
        if name not in zone.nodes:
            reply.header.rcode = RCODE.NXDOMAIN
        _negative(zone, name, reply)
        return


def _negative(zone: Zone, name: str, reply: DNSRecord) -> None:
    apex = zone.apex_of(name)
    if apex is not None:
        reply.add_auth(zone.soa[apex])


def _additional(zone: Zone, rrs: tuple[object, ...], reply: DNSRecord) -> None:
    """Addresses of NS/SRV targets we hold, so clients need no second query."""
    for rr in rrs:
        rtype = getattr(rr, "rtype", None)
        if rtype == QTYPE.NS:
            target = fqdn(str(rr.rdata.label))  # type: ignore[attr-defined]
        elif rtype == QTYPE.SRV:
            target = fqdn(str(rr.rdata.target))  # type: ignore[attr-defined]
        else:
            continue
        sets = zone.rrsets.get(target, {})
        for t in (QTYPE.A, QTYPE.AAAA):
            reply.ar[:0] = list(sets.get(t, ()))  # before OPT, which is packed last anyway


def relay(request: DNSRecord, upstream: DNSRecord | None, limit: int) -> bytes:
    """The client's reply built from an upstream answer (SERVFAIL when there is none)."""
    if upstream is None:
        return fit(_reply(request, RCODE.SERVFAIL, aa=False, ra=True), limit)
    reply = _reply(request, upstream.header.rcode, aa=False, ra=True)
    reply.rr = list(upstream.rr)
    reply.auth = list(upstream.auth)
    reply.ar = [rr for rr in upstream.ar if rr.rtype != QTYPE.OPT] + reply.ar
    return fit(reply, limit)
