"""Forwarding decisions: which upstreams a name goes to, in what order, and the answer cache.

Pure: the network exchange is a function passed in (``Exchange``), the clock a number. The
transport (``vnet.serve.dns``) supplies real UDP/TCP exchanges and calls :func:`resolve` off the
fast path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from vnet.model import DnsForwarder

UPSTREAM_PAYLOAD = 1232  # EDNS0 size we advertise upstream (DNS flag day 2020)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"{self.host}#{self.port}"


def parse_upstream(text: str) -> Upstream:
    """``10.0.0.1`` / ``10.0.0.1#5353`` / ``fd00::1#53`` -> Upstream; ValueError names the text."""
    host, sep, port = text.strip().partition("#")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as err:
        raise ValueError(f"forwarder {text!r}: {host!r} is not an IP address") from err
    if sep and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"forwarder {text!r}: port must be 1..65535")
    return Upstream(str(ip), int(port) if sep else 53)


class Routes:
    """Forwarders by domain: the longest matching ``domain`` wins, else the default list."""

    def __init__(self, forwarders: Iterable[DnsForwarder]) -> None:
        default: list[Upstream] = []
        by_domain: dict[str, list[Upstream]] = {}
        for fwd in forwarders:
            up = parse_upstream(fwd.address)
            if fwd.domain:
                by_domain.setdefault(fwd.domain.lower().rstrip(".") + ".", []).append(up)
            else:
                default.append(up)
        self.default = tuple(default)
        self.by_domain = sorted(
            ((d, tuple(ups)) for d, ups in by_domain.items()), key=lambda x: -len(x[0])
        )

    @property
    def any(self) -> bool:
        return bool(self.default or self.by_domain)

    def upstreams_for(self, qname: str) -> tuple[Upstream, ...]:
        """The upstreams to try in order for ``qname`` (an fqdn); () means refuse."""
        for domain, ups in self.by_domain:
            if qname == domain or qname.endswith("." + domain):
                return ups
        return self.default


Exchange = Callable[[Upstream, bytes, bool], bytes | None]
"""Send ``query`` to an upstream (over TCP when the flag is set); the raw reply or None."""

_RETRY_RCODES = (RCODE.SERVFAIL, RCODE.REFUSED, RCODE.NOTIMP)


def upstream_query(request: DNSRecord, query_id: int) -> bytes:
    """The query we send upstream for ``request``: same question, our ID, our EDNS, RD set."""
    query = DNSRecord(q=request.q)
    query.header.id = query_id
    query.header.rd = 1
    query.add_ar(EDNS0(udp_len=UPSTREAM_PAYLOAD))
    return bytes(query.pack())


def _valid(raw: bytes | None, query_id: int, request: DNSRecord) -> DNSRecord | None:
    if raw is None:
        return None
    try:
        resp = DNSRecord.parse(raw)
    except Exception:
        return None
    if resp.header.id != query_id or not resp.header.qr or len(resp.questions) != 1:
        return None
    q, mine = resp.q, request.q
    if q.qname != mine.qname or q.qtype != mine.qtype or q.qclass != mine.qclass:
        return None
    return resp


def resolve(
    request: DNSRecord,
    upstreams: Iterable[Upstream],
    exchange: Exchange,
    new_id: Callable[[], int],
) -> DNSRecord | None:
    """Ask each upstream in turn; TCP to the same one when its UDP answer is truncated.

    A SERVFAIL/REFUSED/NOTIMP answer moves on to the next upstream (and is returned only if no
    one does better); a timeout or a bogus reply (wrong ID or question) counts as no answer.
    """
    fallback: DNSRecord | None = None
    for up in upstreams:
        qid = new_id()
        wire = upstream_query(request, qid)
        resp = _valid(exchange(up, wire, False), qid, request)
        if resp is not None and resp.header.tc:
            full = _valid(exchange(up, wire, True), qid, request)
            if full is None:
                fallback = fallback or resp
                continue
            resp = full
        if resp is None:
            continue
        if resp.header.rcode in _RETRY_RCODES:
            fallback = fallback or resp
            continue
        return resp
    return fallback


def cache_ttl(resp: DNSRecord, max_ttl: int) -> int:
    """How long an upstream answer may be cached (RFC 2308 for negative answers); 0: not at all."""
    if resp.header.tc:
        return 0
    rcode = resp.header.rcode
    if rcode == RCODE.NOERROR and resp.rr:
        return int(min(max_ttl, *(rr.ttl for rr in resp.rr + resp.auth)))
    if rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
        soas = [rr for rr in resp.auth if rr.rtype == QTYPE.SOA]
        if soas:
            return int(min(max_ttl, soas[0].ttl, soas[0].rdata.times[4]))
    return 0


CacheKey = tuple[str, int, int]


def cache_key(request: DNSRecord) -> CacheKey:
    q = request.q
    return (str(q.qname).lower(), int(q.qtype), int(q.qclass))


class AnswerCache:
    """Upstream answers by question, expiring with their TTL; hits come back with TTLs aged.

    Not thread-safe: the transport holds a lock around it.
    """

    def __init__(self, max_entries: int = 2048, max_ttl: int = 86400) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._entries: dict[CacheKey, tuple[float, float, bytes]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: CacheKey, resp: DNSRecord, now: float) -> None:
        ttl = cache_ttl(resp, self.max_ttl)
        if ttl <= 0:
            return
        if len(self._entries) >= self.max_entries and key not in self._entries:
            self._expire(now)
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries[key] = (now, now + ttl, bytes(resp.pack()))

    def get(self, key: CacheKey, now: float) -> DNSRecord | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        stored, _, wire = entry
        resp = DNSRecord.parse(wire)
        age = int(now - stored)
        for rr in resp.rr + resp.auth + resp.ar:
            if rr.rtype != QTYPE.OPT:
                rr.ttl = max(0, rr.ttl - age)
        return resp

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, exp, _) in self._entries.items() if exp <= now]:
            del self._entries[key]
