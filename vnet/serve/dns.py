"""DNS transport: UDP and TCP port 53 on the network's gateway address, around ``vnet.dns``.

Threads, all owned by one :class:`DnsService`:
- ``dns-udp``: a blocking ``recvfrom`` loop. A question seen before is answered from
  :class:`vnet.dns.cache.ReplyCache` (ID patched, no parsing); anything else goes through
  :func:`vnet.dns.answer.handle`. It never waits on the network: forwarded questions go to
- ``dns-fwd-*``: a small pool that asks upstream servers (UDP, TCP when truncated) and replies.
- ``dns-tcp`` + one thread per TCP connection (bounded): length-prefixed queries, same core.
- ``dns-zone``: rebuilds the Zone after lease events (coalesced) and flushes the reply cache.

A blocking loop in its own thread beat asyncio here (TESTBED.md hot-path facts): the cache hit
costs one recvfrom, one dict lookup, one bytes concatenation and one sendto.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import secrets
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dnslib import DNSRecord

from vnet.dns.answer import Forward, Reply, handle, header_only, relay
from vnet.dns.cache import ReplyCache, TimedReplyCache
from vnet.dns.forward import (
    AnswerCache,
    CacheKey,
    Routes,
    Upstream,
    cache_key,
    cache_ttl,
    resolve,
)
from vnet.dns.zone import Zone, build_zone
from vnet.errors import HostError
from vnet.events import LeaseEvent, LeaseState
from vnet.leases import store_for
from vnet.model import Network
from vnet.serve import Service, ServiceContext

log = logging.getLogger(__name__)

IP_FREEBIND = 15  # bind before the gateway address is configured on the bridge
RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33  # as root: a receive buffer above net.core.rmem_max
MAX_TCP_CLIENTS = 64
TCP_IDLE = 10.0
MAX_FORWARDS_IN_FLIGHT = 256  # distinct questions upstream at once
MAX_WAITERS = 64  # clients waiting for one question's upstream answer
_LEN = struct.Struct("!H")
LeaseRow = tuple[ipaddress.IPv4Address, str, str | None]  # ip, mac, hostname


class DnsService:
    """One network's DNS server. ``port`` and timeouts are parameters for tests and benchmarks."""

    name = "dns"

    def __init__(
        self,
        network: Network,
        ctx: ServiceContext,
        *,
        load_leases: Callable[[], Iterable[LeaseRow]] | None = None,
        port: int = 53,
        upstream_timeout: float = 1.0,
        forward_workers: int = 8,
        batch: bool = True,
    ) -> None:
        assert network.ipv4 is not None
        self.network = network
        self.ctx = ctx
        self.port = port
        self.address = str(network.ipv4.gateway)
        self.subnet = network.ipv4.network
        self.upstream_timeout = upstream_timeout
        self.forward_workers = forward_workers
        self.batch = batch  # recvmmsg/sendmmsg when the platform has them
        self.routes = Routes(network.dns.forwarders if network.dns else ())
        self._load_leases = load_leases
        # ip -> (mac, hostname), oldest first; the zone is rebuilt from it.
        self._leases: OrderedDict[ipaddress.IPv4Address, tuple[str, str | None]] = OrderedDict()
        # mac -> its ips: a lease event finds the client's other addresses in O(1), not a scan
        # (the subscriber runs in the DHCP thread).
        self._by_mac: dict[str, set[ipaddress.IPv4Address]] = {}
        for ip, mac, host in load_leases() if load_leases else ():
            self._put(ip, mac, host)
        self._leases_lock = threading.Lock()
        self._touched: set[ipaddress.IPv4Address] | None = None  # ips events changed at start
        self._serial = int(time.time())
        zone = self._build()
        assert zone is not None
        self.zone: Zone = zone
        self.cache = ReplyCache(max_reply=SEND_SLOT)
        self.answers = AnswerCache()
        self.relayed = TimedReplyCache(max_reply=SEND_SLOT)  # forwarded replies, TTLs aged
        self._answers_lock = threading.Lock()
        self._src_ok: dict[str, bool] = {}
        self._stopping = False
        self._dirty = threading.Event()
        self._wake = threading.Event()  # set on stop: ends the zone thread's rest
        self._threads: list[threading.Thread] = []
        self._tcp_conns: set[socket.socket] = set()
        self._tcp_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._inflight = threading.BoundedSemaphore(MAX_FORWARDS_IN_FLIGHT)
        self._pending: dict[CacheKey, list[tuple[Forward, bytes, tuple[str, int]]]] = {}
        self._pending_lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._counts = {
            "hits": 0, "misses": 0, "forwarded": 0, "forward_cache_hits": 0, "refused": 0,
            "dropped": 0, "tcp_queries": 0, "zone_rebuilds": 0, "errors": 0, "relayed_hits": 0,
            "coalesced": 0,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._udp = self._bind(socket.SOCK_DGRAM)
            self._tcp = self._bind(socket.SOCK_STREAM)
            self._tcp.listen(128)
        except OSError as err:
            self._close_sockets()
            raise HostError(
                f"network {self.network.name!r}: cannot listen for DNS on "
                f"{self.address}:{self.port}: {err.strerror or err}"
            ) from err
        self._pool = ThreadPoolExecutor(self.forward_workers, thread_name_prefix="dns-fwd")
        self._subscribe()
        for target, tname in (
            (self._udp_loop, "dns-udp"),
            (self._tcp_accept, "dns-tcp"),
            (self._zone_loop, "dns-zone"),
        ):
            thread = threading.Thread(
                target=target, name=f"{tname}-{self.network.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("DNS for %s listening on %s:%d", self.network.name, self.address, self.port)

    def update_guests(self, network: Network) -> None:
        """The network's guests changed (an attachment came or went): rebuild the names, if
        the guests that have names (a reserved address) changed."""
        before = {(g.name, g.ip) for g in self.network.guests if g.ip}
        self.network = network
        if {(g.name, g.ip) for g in network.guests if g.ip} != before:
            self._dirty.set()

    def _subscribe(self) -> None:
        """Follow lease events, then catch up with the store: leases that changed between
        construction and now are not lost, and an event seen meanwhile beats the store."""
        with self._leases_lock:
            self._touched = set()
        self._unsubscribe = self.ctx.events.subscribe(self._on_lease)
        if self._load_leases is not None:
            rows = list(self._load_leases())
            with self._leases_lock:
                touched, self._touched = self._touched, None
                keep = {ip for ip, _, _ in rows} | touched
                for ip in [ip for ip in self._leases if ip not in keep]:
                    self._drop(ip)
                for ip, mac, host in rows:
                    if ip not in touched and self._leases.get(ip) != (mac, host):
                        self._put(ip, mac, host)
            self._dirty.set()
        else:
            with self._leases_lock:
                self._touched = None

    def stop(self) -> None:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._dirty.set()
        self._wake.set()
        for sock in (self._udp, self._tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recvfrom / accept
        with self._tcp_lock:
            for conn in self._tcp_conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._close_sockets()

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "cache_entries": len(self.cache.entries),
            "cache_flushes": self.cache.flushes,
            "forward_cache_entries": len(self.answers),
            "relayed_entries": len(self.relayed.entries),
            "names": len(self.zone.rrsets),
        }

    def _bind(self, kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            if kind == socket.SOCK_DGRAM:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((self.address, self.port))
        except OSError:
            sock.close()
            raise
        return sock

    def _close_sockets(self) -> None:
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    # -- zone ------------------------------------------------------------------------------

    def _build(self) -> Zone | None:
        with self._leases_lock:
            names = {ip: host for ip, (_, host) in self._leases.items() if host}
        self._serial = max(self._serial + 1, int(time.time()))
        return build_zone(self.network, names, self._serial)

    def _put(self, ip: ipaddress.IPv4Address, mac: str, host: str | None) -> None:
        """Record ``ip`` as ``mac``'s (newest last). Caller holds the lock, or is __init__."""
        self._drop(ip)
        self._leases[ip] = (mac, host)
        self._by_mac.setdefault(mac, set()).add(ip)

    def _drop(self, ip: ipaddress.IPv4Address) -> None:
        entry = self._leases.pop(ip, None)
        if entry is not None:
            ips = self._by_mac.get(entry[0])
            if ips is not None:
                ips.discard(ip)
                if not ips:
                    del self._by_mac[entry[0]]

    def _on_lease(self, event: LeaseEvent) -> None:
        """Lease bus subscriber: record the change; the zone thread rebuilds (coalesced)."""
        if event.network != self.network.name:
            return
        with self._leases_lock:
            if self._touched is not None:
                self._touched.add(event.ip)
            old = self._leases.get(event.ip)
            if event.state in (LeaseState.BOUND, LeaseState.RENEWED):
                host = event.hostname or (old[1] if old and old[0] == event.mac else None)
                for ip in list(self._by_mac.get(event.mac, ())):
                    if ip != event.ip:
                        self._drop(ip)
                        old = None  # the client moved: the name changes even if it is the same
                if old == (event.mac, host) and event.state == LeaseState.RENEWED:
                    return
                self._put(event.ip, event.mac, host)
            elif old is not None and old[0] == event.mac:
                self._drop(event.ip)
            else:
                return
        self._dirty.set()

    def _zone_loop(self) -> None:
        """Rebuild after lease changes; a storm of events costs at most ~1/3 of a CPU.

        A rebuild takes ~25 ms per 1,000 leases; after each one the thread rests twice as long
        (events arriving meanwhile are coalesced into the next rebuild).
        """
        while True:
            self._dirty.wait()
            if self._stopping:
                return
            self._dirty.clear()
            began = time.monotonic()
            try:
                zone = self._build()
            except Exception:
                log.exception("DNS %s: zone rebuild failed; keeping the old one", self.network.name)
                continue
            if zone is not None:
                self._counts["zone_rebuilds"] += 1  # first: whoever sees the zone sees the count
                self.zone = zone
                self.cache.invalidate()
            rest = 2 * (time.monotonic() - began)
            if rest > 0.005 and self._wake.wait(rest):
                return

    # -- UDP -------------------------------------------------------------------------------

    def _allowed(self, src: str) -> bool:
        """Whether ``src`` may use this server (inside the network's subnet); memoised."""
        try:
            ok = ipaddress.ip_address(src) in self.subnet
        except ValueError:
            ok = False
        if len(self._src_ok) > 4096:
            self._src_ok.clear()
        self._src_ok[src] = ok
        return ok

    def _udp_loop(self) -> None:
        if self.batch and _MmsgVectors.available():
            self._udp_loop_batched()
        else:
            self._udp_loop_simple()

    def _udp_loop_simple(self) -> None:
        """One recvfrom + one sendto per query (portable; used when recvmmsg is missing)."""
        sock = self._udp
        assert sock is not None
        recvfrom, sendto = sock.recvfrom, sock.sendto
        cached = self.cache.entries.get
        src_ok = self._src_ok.get
        counts = self._counts
        hits = 0
        while True:
            try:
                data, addr = recvfrom(4096)
            except OSError:
                if self._stopping:
                    break
                continue
            if not data:  # shutdown() on stop wakes us with b"" (an empty datagram is no query)
                if self._stopping:
                    break
                continue
            ok = src_ok(addr[0])
            if ok:
                reply = cached(data[2:])
                if reply is not None:
                    try:  # noqa: SIM105 (contextlib.suppress costs ~5% on this path)
                        sendto(data[:2] + reply, addr)
                    except OSError:
                        pass
                    hits += 1
                    if not hits & 0x3FF:
                        counts["hits"] = hits
                    continue
            counts["hits"] = hits
            if ok is None:
                ok = self._allowed(addr[0])
            try:
                self._udp_slow(sock, data, addr, ok)
            except Exception:
                counts["errors"] += 1
                log.exception("DNS %s: query from %s failed", self.network.name, addr)
        counts["hits"] = hits

    def _udp_loop_batched(self) -> None:
        """recvmmsg/sendmmsg: up to BATCH queries per system call in each direction.

        Under load the kernel hands us many datagrams per call; a cache hit then costs a dict
        lookup and two slice copies into the send vectors (plus a TTL patch per record for a
        forwarded answer from the relayed cache). Everything else goes to _udp_slow.
        """
        sock = self._udp
        assert sock is not None
        vec = _MmsgVectors()
        fd = sock.fileno()
        recvmmsg, sendmmsg = vec.recvmmsg, vec.sendmmsg
        rmsg, smsg, siov, names = vec.rmsg, vec.smsg, vec.siov, vec.names
        rbuf: Any = vec.rbuf  # a c_char array: slicing it gives bytes
        rview, sview = memoryview(rbuf).cast("B"), memoryview(vec.sbuf).cast("B")
        names_addr, smsg_addr = vec.names_addr, vec.smsg_addr
        unpack_len, unpack_ip = _U32.unpack_from, _BE32.unpack_from
        pack_ptr, pack_size = _PTR.pack_into, _SIZE.pack_into
        cached = self.cache.entries.get
        relayed = self.relayed.entries.get
        monotonic = time.monotonic
        pack_ttl = _BE32.pack_into
        mask = int(self.subnet.netmask)
        net = int(self.subnet.network_address)
        counts = self._counts
        hits = relayed_hits = 0
        while True:
            n = recvmmsg(fd, rmsg, BATCH, MSG_WAITFORONE, None)
            if n <= 0:
                if self._stopping or (n < 0 and ctypes.get_errno() == errno.EBADF):
                    break
                continue
            k = 0
            now = monotonic()
            for i in range(n):
                length = unpack_len(rmsg, i * _MMSG + _MSG_LEN)[0]
                off = i * RECV_SLOT
                ok = unpack_ip(names, i * _SOCKADDR + 4)[0] & mask == net
                if ok and length >= 12:
                    key = rbuf[off + 2 : off + length]
                    reply = cached(key)
                    if reply is not None:
                        soff = k * SEND_SLOT
                        end = soff + 2 + len(reply)
                        sview[soff : soff + 2] = rview[off : off + 2]
                        sview[soff + 2 : end] = reply
                        pack_size(siov, k * _IOVEC + 8, end - soff)
                        pack_ptr(smsg, k * _MMSG, names_addr + i * _SOCKADDR)
                        k += 1
                        continue
                    entry = relayed(key)
                    if entry is not None and entry[1] > now:  # a forwarded answer, still valid
                        stored, _, full, ttls = entry
                        soff = k * SEND_SLOT
                        end = soff + len(full)
                        sview[soff:end] = full
                        sview[soff : soff + 2] = rview[off : off + 2]
                        age = int(now - stored)
                        if age:
                            for field, ttl in ttls:
                                pack_ttl(sview, soff + field, ttl - age if ttl > age else 0)
                        pack_size(siov, k * _IOVEC + 8, end - soff)
                        pack_ptr(smsg, k * _MMSG, names_addr + i * _SOCKADDR)
                        k += 1
                        relayed_hits += 1
                        continue
                if length == 0:  # shutdown() on stop wakes us with an empty message
                    continue
                port, ip = _SOCKADDR_IN.unpack_from(names, i * _SOCKADDR + 2)
                addr = (socket.inet_ntoa(ip), port)
                try:
                    self._udp_slow(sock, rbuf[off : off + length], addr, ok)
                except Exception:
                    counts["errors"] += 1
                    log.exception("DNS %s: query from %s failed", self.network.name, addr)
            hits = hits + k - relayed_hits  # counted first: a client may ask for stats next
            counts["hits"] = hits
            counts["relayed_hits"] += relayed_hits
            relayed_hits = 0
            start = 0
            while start < k:  # a message the kernel refuses is skipped, the rest still go
                sent = sendmmsg(fd, ctypes.c_void_p(smsg_addr + start * _MMSG), k - start, 0)
                start += sent if sent > 0 else 1
            if self._stopping:
                break

    def _udp_slow(self, sock: socket.socket, data: bytes, addr: tuple[str, int], ok: bool) -> None:
        if ok:
            relayed = self.relayed.get(data, time.monotonic())
            if relayed is not None:
                self._counts["relayed_hits"] += 1
                with contextlib.suppress(OSError):
                    sock.sendto(relayed, addr)
                return
        generation = self.cache.generation
        out = handle(data, self.zone, self.routes, allowed=ok, tcp=False)
        self._counts["misses"] += 1
        if out is None:
            self._counts["dropped"] += 1
        elif isinstance(out, Reply):
            if not ok:
                self._counts["refused"] += 1
            if ok and out.cacheable:
                self.cache.store(data, out.wire, generation)
            with contextlib.suppress(OSError):
                sock.sendto(out.wire, addr)
        else:
            cached = self._from_answer_cache(out)
            if cached is not None:
                self.relayed.store(data, cached[0], time.monotonic(), cached[1])
                with contextlib.suppress(OSError):
                    sock.sendto(cached[0], addr)
                return
            key = cache_key(out.request)
            with self._pending_lock:
                waiters = self._pending.get(key)
                if waiters is not None:  # the same question is already upstream: wait for it
                    if len(waiters) < MAX_WAITERS:
                        waiters.append((out, data, addr))
                        self._counts["coalesced"] += 1
                    else:
                        self._counts["dropped"] += 1
                    return
                if self._pool is None or not self._inflight.acquire(blocking=False):
                    self._counts["dropped"] += 1
                    return
                self._pending[key] = [(out, data, addr)]
            self._pool.submit(self._forward_udp, sock, key)

    def _forward_udp(self, sock: socket.socket, key: CacheKey) -> None:
        """Resolve one pending question upstream and answer every client waiting for it."""
        resp: DNSRecord | None = None
        try:
            resp = self._resolve(self._pending[key][0][0])
        except Exception:
            self._counts["errors"] += 1
            log.exception("DNS %s: forwarding failed", self.network.name)
        finally:
            with self._pending_lock:
                waiters = self._pending.pop(key, [])
            self._inflight.release()
        now = time.monotonic()
        ttl = cache_ttl(resp, self.answers.max_ttl) if resp is not None else 0
        for fwd, data, addr in waiters:
            wire = relay(fwd.request, resp, fwd.limit)
            self.relayed.store(data, wire, now, ttl)  # before the reply: a client asking again
            with contextlib.suppress(OSError):  # at once must find it
                sock.sendto(wire, addr)

    # -- forwarding ------------------------------------------------------------------------

    def _from_answer_cache(self, fwd: Forward) -> tuple[bytes, int] | None:
        """The client's reply from a cached upstream answer, and how long it stays valid."""
        with self._answers_lock:
            hit = self.answers.get(cache_key(fwd.request), time.monotonic())
        if hit is None:
            return None
        self._counts["forward_cache_hits"] += 1
        return relay(fwd.request, hit, fwd.limit), cache_ttl(hit, self.answers.max_ttl)

    def _resolve(self, fwd: Forward) -> DNSRecord | None:
        """Ask the upstreams (blocking; never on the UDP thread) and cache the answer."""
        self._counts["forwarded"] += 1
        resp = resolve(fwd.request, fwd.upstreams, self._exchange, lambda: secrets.randbits(16))
        if resp is not None:
            with self._answers_lock:
                self.answers.put(cache_key(fwd.request), resp, time.monotonic())
        return resp

    def _forward(self, fwd: Forward) -> tuple[bytes, int]:
        """The reply for a TCP client (no coalescing there): upstream answer and its TTL."""
        resp = self._resolve(fwd)
        ttl = cache_ttl(resp, self.answers.max_ttl) if resp is not None else 0
        return relay(fwd.request, resp, fwd.limit), ttl

    def _exchange(self, up: Upstream, wire: bytes, tcp: bool) -> bytes | None:
        family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
        try:
            if tcp:
                with socket.create_connection((up.host, up.port), self.upstream_timeout * 2) as s:
                    s.sendall(_LEN.pack(len(wire)) + wire)
                    return _read_message(s)
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(self.upstream_timeout)
                s.connect((up.host, up.port))
                s.send(wire)
                deadline = time.monotonic() + self.upstream_timeout
                while True:
                    raw = s.recv(65535)
                    if raw[:2] == wire[:2]:
                        return raw
                    s.settimeout(max(0.001, deadline - time.monotonic()))
        except (OSError, EOFError):
            return None

    # -- TCP -------------------------------------------------------------------------------

    def _tcp_accept(self) -> None:
        listener = self._tcp
        assert listener is not None
        while not self._stopping:
            try:
                conn, addr = listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            with self._tcp_lock:
                if len(self._tcp_conns) >= MAX_TCP_CLIENTS or self._stopping:
                    conn.close()
                    continue
                self._tcp_conns.add(conn)
            threading.Thread(
                target=self._tcp_client, args=(conn, addr), name="dns-tcp-client", daemon=True
            ).start()

    def _tcp_client(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        ok = self._allowed(addr[0])
        try:
            conn.settimeout(TCP_IDLE)
            while not self._stopping:
                data = _read_message(conn)
                if data is None:
                    return
                self._counts["tcp_queries"] += 1
                out = handle(data, self.zone, self.routes, allowed=ok, tcp=True)
                if out is None:
                    wire = header_only(data, 1)
                    if wire is None:
                        return
                elif isinstance(out, Reply):
                    wire = out.wire
                else:
                    wire = (self._from_answer_cache(out) or self._forward(out))[0]
                conn.sendall(_LEN.pack(len(wire)) + wire)
        except (OSError, EOFError):
            pass
        except Exception:
            self._counts["errors"] += 1
            log.exception("DNS %s: TCP client %s failed", self.network.name, addr)
        finally:
            with self._tcp_lock:
                self._tcp_conns.discard(conn)
            conn.close()


BATCH = 64  # datagrams per recvmmsg/sendmmsg
RECV_SLOT = 4096  # bytes per received datagram (a longer query arrives cut: FORMERR)
SEND_SLOT = 2048  # cached replies fit the UDP limit (1232)
MSG_WAITFORONE = 0x10000
_MMSG, _MSG_LEN, _IOVEC, _SOCKADDR = 64, 56, 16, 16  # struct mmsghdr/iovec/sockaddr_in, LP64
_U32, _BE32, _PTR, _SIZE = (struct.Struct(f) for f in ("I", "!I", "P", "N"))
_SOCKADDR_IN = struct.Struct("!H4s")
_MSGHDR = struct.Struct("PI4xPNPNi")


class _MmsgVectors:
    """Receive and send vectors for recvmmsg/sendmmsg (Linux, LP64), in ctypes buffers.

    Receive slot i: RECV_SLOT bytes of rbuf, source address at names[16*i]. Send slot k: its
    iovec points into sbuf; the loop fills the length and the msg_name pointer (the source
    address of the query it answers). The buffers live as long as this object.
    """

    _libc: ctypes.CDLL | None = None

    @classmethod
    def available(cls) -> bool:
        if ctypes.sizeof(ctypes.c_void_p) != 8 or not sys.platform.startswith("linux"):
            return False
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            if not (hasattr(libc, "recvmmsg") and hasattr(libc, "sendmmsg")):
                return False
            cls._libc = libc
        return True

    def __init__(self) -> None:
        libc = self._libc
        assert libc is not None
        self.recvmmsg, self.sendmmsg = libc.recvmmsg, libc.sendmmsg
        self.rbuf = ctypes.create_string_buffer(BATCH * RECV_SLOT)
        self.sbuf = ctypes.create_string_buffer(BATCH * SEND_SLOT)
        self.names = ctypes.create_string_buffer(BATCH * _SOCKADDR)
        self.riov = ctypes.create_string_buffer(BATCH * _IOVEC)
        self.siov = ctypes.create_string_buffer(BATCH * _IOVEC)
        self.rmsg = ctypes.create_string_buffer(BATCH * _MMSG)
        self.smsg = ctypes.create_string_buffer(BATCH * _MMSG)
        rbuf, sbuf = ctypes.addressof(self.rbuf), ctypes.addressof(self.sbuf)
        riov, siov = ctypes.addressof(self.riov), ctypes.addressof(self.siov)
        self.names_addr = ctypes.addressof(self.names)
        self.smsg_addr = ctypes.addressof(self.smsg)
        for i in range(BATCH):
            _IOV.pack_into(self.riov, i * _IOVEC, rbuf + i * RECV_SLOT, RECV_SLOT)
            _IOV.pack_into(self.siov, i * _IOVEC, sbuf + i * SEND_SLOT, 0)
            _MSGHDR.pack_into(self.rmsg, i * _MMSG, self.names_addr + i * _SOCKADDR, _SOCKADDR,
                              riov + i * _IOVEC, 1, 0, 0, 0)
            _MSGHDR.pack_into(self.smsg, i * _MMSG, 0, _SOCKADDR, siov + i * _IOVEC, 1, 0, 0, 0)


_IOV = struct.Struct("PN")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _read_message(sock: socket.socket) -> bytes | None:
    """One length-prefixed DNS message, or None at a clean end of stream."""
    try:
        head = _read_exact(sock, 2)
    except EOFError:
        return None
    return _read_exact(sock, _LEN.unpack(head)[0])


def _store_leases(network: Network, ctx: ServiceContext) -> list[LeaseRow]:
    """The network's active leases from the lease store, oldest first (empty if none)."""
    records = store_for(ctx.state_dir).active_leases(network.name)
    return [(r.ip, r.mac, r.hostname) for r in sorted(records, key=lambda r: r.expires)]


def create(network: Network, ctx: ServiceContext) -> Service | None:
    """The DNS service for ``network``, or None when it has no IPv4 or its DNS is disabled."""
    if network.ipv4 is None or (network.dns is not None and not network.dns.enabled):
        return None
    return DnsService(network, ctx, load_leases=lambda: _store_leases(network, ctx))

