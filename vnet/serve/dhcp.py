"""DHCPv4 transport: one UDP listener per network bridge, around ``vnet.dhcp.server.DhcpCore``.

decode -> core.handle(packet, now) -> (commit to the lease store, then) send. A socket loop in
its own thread (no asyncio: its UDP transport costs a 256 KiB read per datagram). Each cycle
drains the socket (up to BATCH datagrams), commits the lease changes of the whole cycle in one
transaction (group commit), then publishes the lease events and sends the replies. Everything
happens in this one thread: no GIL hand-offs on the hot path (a committer thread measured no
faster: it traded the fsync wait for GIL waits). Relayed requests (giaddr set) are answered by
the network whose subnet holds giaddr, whichever bridge they arrived on; unknown relays are
refused and counted. The socket's errors and malformed input never stop the loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref

from vnet.dhcp import codec
from vnet.dhcp.lease import Row
from vnet.dhcp.server import BROADCAST_IP, DhcpCore, Outcome, ServerConfig
from vnet.errors import HostError
from vnet.events import EventBus
from vnet.leases import LeaseStore, store_for
from vnet.model import Network
from vnet.serve import Service, ServiceContext

log = logging.getLogger(__name__)

SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1
BATCH = 64  # datagrams per cycle: bounds the burst of ACKs sent after one commit
SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module
RCVBUF = 32 << 20
EXPIRE_EVERY = 1.0
RECV_SIZE = 4096  # larger than any DHCP message we answer; bigger ones are truncated -> dropped
PROBE_WAIT = 0.5  # seconds an address has to answer a ping before it is offered


def _icmp_echo(ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vnet-dhcp-probe"
    total = sum(struct.unpack(f"!{len(body) // 2}H", body[: len(body) // 2 * 2]))
    if len(body) % 2:
        total += body[-1] << 8
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    checksum = ~total & 0xFFFF
    return body[:2] + struct.pack("!H", checksum) + body[4:]


class _Directory:
    """The DHCP services of one daemon, to route relayed requests by giaddr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.services: tuple[DhcpService, ...] = ()

    def add(self, service: DhcpService) -> None:
        with self.lock:
            self.services = (*self.services, service)

    def remove(self, service: DhcpService) -> None:
        with self.lock:
            self.services = tuple(s for s in self.services if s is not service)

    def for_relay(self, giaddr: bytes) -> DhcpService | None:
        ip = int.from_bytes(giaddr, "big")
        for service in self.services:
            if service.core.owns_relay(ip):
                return service
        return None


_directories: weakref.WeakKeyDictionary[EventBus, _Directory] = weakref.WeakKeyDictionary()


def _directory(events: EventBus) -> _Directory:
    directory = _directories.get(events)
    if directory is None:
        directory = _directories[events] = _Directory()
    return directory


def _arpreq(ip: bytes, mac: bytes, ifname: bytes) -> bytes:
    """struct arpreq: protocol address, hardware address, flags, netmask, device."""
    pa = struct.pack("=H", socket.AF_INET) + b"\0\0" + ip + b"\0" * 8
    ha = struct.pack("=H", ARPHRD_ETHER) + mac + b"\0" * 8
    return pa + ha + struct.pack("=i", ATF_COM) + b"\0" * 16 + ifname.ljust(16, b"\0")


class DhcpService:
    """The DHCP server of one network: a socket bound to its bridge and a receive thread."""

    name = "dhcp"

    def __init__(
        self, network: Network, config: ServerConfig, ctx: ServiceContext, ifname: str,
        store: LeaseStore | None = None,
    ) -> None:
        self.network = network
        self.config = config
        self.ctx = ctx
        self.ifname = ifname
        self.store = store if store is not None else store_for(ctx.state_dir)
        self.core = DhcpCore(config, [])
        self.lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "relay_refused", "sent", "send_errors", "arp_fallback",
             "commit_failed"),
            0,
        )
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._directory = _directory(ctx.events)
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._icmp: socket.socket | None = None
        self._probes: dict[bytes, tuple[float, DhcpService, Outcome]] = {}
        self._icmp_seq = 0

    # ----- Service protocol -----

    def start(self) -> None:
        self.core = DhcpCore(self.config, self.store.load(self.config.network))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            # A deep receive queue rides out an fsync stall of the lease commit (tens of ms
            # when other processes write to the disk) instead of dropping requests. The FORCE
            # variant, allowed to root, is not capped by net.core.rmem_max.
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind(("0.0.0.0", 67))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise HostError(
                f"network {self.config.network!r}: cannot listen for DHCP on {self.ifname}: {err}"
            ) from err
        self._sock = sock
        if self.config.probe:
            try:
                icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                icmp.setblocking(False)
                self._icmp = icmp
            except OSError as err:
                log.warning("%s: cannot probe addresses before offering (%s): offering "
                            "without", self.config.network, err)
        self._stop.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._directory.add(self)
        self._thread = threading.Thread(
            target=self._loop, name=f"vnet-dhcp-{self.config.network}", daemon=True
        )
        self._thread.start()
        log.info(
            "%s: DHCP on %s (%s, %d leases loaded)", self.config.network, self.ifname,
            self.config.subnet, len(self.core.by_ip),
        )

    def stop(self) -> None:
        self._directory.remove(self)
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for s in (self._sock, self._wake_r, self._wake_w, self._icmp):
            if s is not None:
                s.close()
        self._sock = self._wake_r = self._wake_w = self._icmp = None

    def stats(self) -> dict[str, int]:
        with self.lock:
            out = dict(self.core.counters)
        out.update(self.counters)
        return out

    # ----- the loop -----

    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        wake = self._wake_r
        assert wake is not None
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake.fileno(), select.POLLIN)
        if self._icmp is not None:
            poller.register(self._icmp.fileno(), select.POLLIN)
        next_expire = 0.0
        recvfrom = sock.recvfrom
        while not self._stop.is_set():
            timeout = 500
            if self._probes:
                first = min(deadline for deadline, _, _ in self._probes.values())
                timeout = max(0, min(timeout, int((first - time.time()) * 1000) + 1))
            try:
                poller.poll(timeout)
            except InterruptedError:
                continue
            now = time.time()
            if now >= next_expire:
                next_expire = now + EXPIRE_EVERY
                self._expire(now)
            sends: dict[DhcpService, list[Outcome]] = {}
            rows: list[Row] = []
            if self._icmp is not None:
                self._probe_results(now, sends, rows)
            for _ in range(BATCH):
                try:
                    data, _addr = recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as err:
                    log.warning("%s: receive failed: %s", self.config.network, err)
                    break
                try:
                    self._one(data, now, sends, rows)
                except Exception:
                    log.exception("%s: request handling failed", self.config.network)
            if sends:
                self._dispatch(sends, rows)

    def _one(
        self, data: bytes, now: float, sends: dict[DhcpService, list[Outcome]], rows: list[Row]
    ) -> None:
        self.counters["received"] += 1
        try:
            pkt = codec.decode(data)
        except codec.MalformedPacket as err:
            self.counters["malformed"] += 1
            log.debug("%s: dropped malformed packet: %s", self.config.network, err)
            return
        service = self
        if pkt.giaddr != codec.ZERO_IP and not self.core.owns_relay(int.from_bytes(pkt.giaddr)):
            other = self._directory.for_relay(pkt.giaddr)
            if other is None:
                self.counters["relay_refused"] += 1
                log.debug("%s: refused relay %s: no network holds it", self.config.network,
                          ipaddress.IPv4Address(pkt.giaddr))
                return
            service = other
        with service.lock:
            out = service.core.handle(pkt, now)
        if out is None:
            return
        if out.probe is not None and self._icmp is not None:
            self._start_probe(out.probe, service, out, now)
            return
        if out.commit is None:
            # Nothing to make durable (OFFER, NAK, INFORM): answer at once, which also spreads
            # the replies out instead of bursting them at a relay after the cycle.
            if out.reply is not None:
                service._send(out)
            return
        sends.setdefault(service, []).append(out)
        rows.append(out.commit)

    # ----- probing an address before offering it -----

    def _start_probe(self, ip: bytes, service: DhcpService, out: Outcome, now: float) -> None:
        assert self._icmp is not None
        self._icmp_seq = (self._icmp_seq + 1) & 0xFFFF
        echo = _icmp_echo(os.getpid() & 0xFFFF, self._icmp_seq)
        try:
            self._icmp.sendto(echo, (socket.inet_ntoa(ip), 0))
        except OSError as err:
            log.debug("%s: probe of %s failed: %s", self.config.network, socket.inet_ntoa(ip), err)
        self._probes[ip] = (now + PROBE_WAIT, service, out)

    def _probe_results(
        self, now: float, sends: dict[DhcpService, list[Outcome]], rows: list[Row]
    ) -> None:
        """Drop offers of addresses that answered; send those whose wait is over."""
        assert self._icmp is not None
        while True:
            try:
                data = self._icmp.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            ihl = (data[0] & 0x0F) * 4 if data else 0
            if len(data) < ihl + 8 or data[ihl] != 0:  # echo reply only
                continue
            entry = self._probes.pop(data[12:16], None)
            if entry is None:
                continue
            _, service, _ = entry
            with service.lock:
                conflict = service.core.in_use(int.from_bytes(data[12:16], "big"), now)
            if conflict is not None:
                sends.setdefault(service, []).append(conflict)
                if conflict.commit is not None:
                    rows.append(conflict.commit)
        for ip, (deadline, service, out) in list(self._probes.items()):
            if deadline <= now:
                del self._probes[ip]
                sends.setdefault(service, []).append(out)

    def _expire(self, now: float) -> None:
        with self.lock:
            outs = self.core.expire(now)
        if outs:
            self._dispatch({self: outs}, [o.commit for o in outs if o.commit is not None])

    def _dispatch(self, sends: dict[DhcpService, list[Outcome]], rows: list[Row]) -> None:
        """Send what needs no commit (OFFERs, NAKs) at once; commit the cycle's lease changes
        in one transaction; then publish the events (bindings and names first) and send the ACKs."""
        for service, outs in sends.items():
            for out in outs:
                if out.commit is None and out.reply is not None:
                    service._send(out)
        if not rows:
            return
        try:
            self.store.write(rows)
        except HostError as err:
            # Not durable: none of the cycle's ACKs is sent; the clients will retry.
            self.counters["commit_failed"] += 1
            log.error("%s: %s", self.config.network, err)
            return
        # Publish before the ACKs leave: a client that holds its ACK may use its address at
        # once, so its anti-spoofing binding (filter service) must already be in place and its
        # name already queued for DNS.
        publish = self.ctx.events.publish
        for outs in sends.values():
            for out in outs:
                if out.event is not None:
                    publish(out.event)
        for service, outs in sends.items():
            for out in outs:
                if out.commit is not None and out.reply is not None:
                    service._send(out)

    def _send(self, out: Outcome) -> None:
        sock = self._sock
        if sock is None or out.reply is None:
            return
        dest = out.dest
        if out.arp_mac is not None and not self._teach_arp(dest, out.arp_mac):
            dest = BROADCAST_IP
        try:
            sock.sendto(out.reply, (socket.inet_ntoa(dest), out.port))
            self.counters["sent"] += 1
        except OSError as err:
            self.counters["send_errors"] += 1
            if err.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.warning("%s: send to %s failed: %s", self.config.network,
                            socket.inet_ntoa(dest), err)

    def _teach_arp(self, ip: bytes, mac: bytes) -> bool:
        """Unicast to a client without an address: put its MAC in the ARP table first."""
        sock = self._sock
        assert sock is not None
        try:
            fcntl.ioctl(sock.fileno(), SIOCSARP, _arpreq(ip, mac, self.ifname.encode()))
        except OSError:
            self.counters["arp_fallback"] += 1
            return False
        return True


def create(network: Network, ctx: ServiceContext) -> Service | None:
    """The DHCP service of ``network``, or None when it has no bridge or no DHCP settings."""
    config = ServerConfig.from_network(network)
    if config is None or network.bridge is None:
        return None
    return DhcpService(network, config, ctx, network.bridge.name)
