"""The DHCPv4 server core: RFC 2131 state machine, address allocation, reply building.

``DhcpCore.handle(packet, now)`` is a function of the packet, the core's lease table and the
clock passed in; it returns an ``Outcome`` (reply bytes and where to send them, the lease row
to make durable *before* sending, the event to publish after) or None (stay silent). No
sockets, no database, no clock of its own: the transport (``vnet.serve.dhcp``) does those.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
from dataclasses import dataclass, field

from vnet.dhcp import codec
from vnet.dhcp import options as o
from vnet.dhcp.codec import Packet
from vnet.dhcp.lease import BOUND, DECLINED, EXPIRED, OFFERED, RELEASED, Lease, Row
from vnet.events import LeaseEvent, LeaseState
from vnet.model import BootSpec, DhcpRange, Mode, Network, Reservation, StaticRoute

log = logging.getLogger(__name__)

BROADCAST_IP = b"\xff\xff\xff\xff"
CLIENT_PORT = 68
SERVER_PORT = 67
ALWAYS_SENT = frozenset({o.SUBNET_MASK, o.ROUTER, o.DNS_SERVERS, o.DOMAIN_NAME})
MAX_RATE_ENTRIES = 65536
MAX_PRL_CACHE = 256


@dataclass(frozen=True)
class ServerConfig:
    """What the DHCP server of one network needs, taken from the validated model."""

    network: str
    server_ip: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    ranges: tuple[DhcpRange, ...]
    lease_time: int = 3600
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    domain: str | None = None
    mtu: int | None = None
    routes: tuple[StaticRoute, ...] = ()
    ntp: tuple[ipaddress.IPv4Address, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    boot: BootSpec | None = None
    rate_limit: int = 50
    max_pool_share: float = 1.0
    offer_ttl: float = 30.0
    decline_quarantine: float = 600.0
    max_leases_per_mac: int = 2
    probe: bool = False

    @classmethod
    def from_network(cls, network: Network) -> ServerConfig | None:
        """The network's DHCP settings, or None if it serves no DHCP."""
        if network.ipv4 is None or network.ipv4.dhcp is None:
            return None
        v4 = network.ipv4
        dhcp = v4.dhcp
        assert dhcp is not None
        dns_on = network.dns is not None and network.dns.enabled
        mtu = dhcp.mtu if dhcp.mtu is not None else (network.bridge.mtu if network.bridge else None)
        return cls(
            network=network.name,
            server_ip=v4.gateway,
            subnet=v4.network,
            ranges=dhcp.ranges,
            lease_time=dhcp.lease_time,
            router=None if network.mode is Mode.ISOLATED else v4.gateway,
            dns=(v4.gateway,) if dns_on else (),
            domain=network.dns.domain if network.dns is not None else None,
            mtu=mtu,
            routes=dhcp.routes,
            ntp=dhcp.ntp,
            reservations=dhcp.reservations,
            boot=dhcp.boot,
            rate_limit=dhcp.rate_limit,
            max_pool_share=dhcp.max_pool_share,
            probe=dhcp.probe,
        )


@dataclass(slots=True)
class Outcome:
    """What the transport must do for one request.

    ``reply`` is sent to ``dest``:``port`` (4 raw address bytes) only after ``commit`` (if any)
    is durable. ``arp_mac``: the destination has no address yet; the transport must teach the
    kernel its MAC (or broadcast) before unicasting. ``probe``: the network wants a ping of this
    new address first; send the reply only if nobody answers (else call ``DhcpCore.in_use``).
    """

    reply: bytes | None
    dest: bytes = BROADCAST_IP
    port: int = CLIENT_PORT
    arp_mac: bytes | None = None
    commit: Row | None = None
    event: LeaseEvent | None = None
    probe: bytes | None = None


@dataclass(slots=True)
class _Pool:
    """The dynamic addresses as integer spans, walked by a cursor for O(1) allocation."""

    spans: list[tuple[int, int]]  # (first, last) inclusive
    excluded: frozenset[int]
    size: int = field(init=False)
    cursor: int = 0

    def __post_init__(self) -> None:
        self.size = sum(last - first + 1 for first, last in self.spans)

    def contains(self, ip: int) -> bool:
        if ip in self.excluded:
            return False
        if len(self.spans) == 1:  # the usual case, without a generator
            first, last = self.spans[0]
            return first <= ip <= last
        return any(first <= ip <= last for first, last in self.spans)

    def at(self, index: int) -> int:
        for first, last in self.spans:
            width = last - first + 1
            if index < width:
                return first + index
            index -= width
        raise IndexError(index)


def _hostname(raw: bytes | None) -> str | None:
    """The first label of a client-sent hostname, if it is a valid DNS label."""
    if not raw:
        return None
    label = raw.split(b".", 1)[0].rstrip(b"\0")
    if not label or len(label) > 63:
        return None
    try:
        text = label.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text[0] == "-" or text[-1] == "-" or not all(c.isalnum() or c == "-" for c in text):
        return None
    return text.lower()


class DhcpCore:
    """The lease table and reply logic of one network's DHCP server. Not thread-safe."""

    def __init__(self, config: ServerConfig, leases: list[Lease] | None = None) -> None:
        self.config = config
        self.server_id = config.server_ip.packed
        net = config.subnet
        self._net_first = int(net.network_address)
        self._net_last = int(net.broadcast_address)
        self._mask = int(net.netmask)
        self._res_by_mac = {r.mac: r for r in config.reservations if r.mac}
        self._res_by_cid = {r.client_id: r for r in config.reservations if r.client_id}
        self._reserved_ips = frozenset(int(r.ip) for r in config.reservations)
        excluded = {int(config.server_ip), self._net_first, self._net_last} | self._reserved_ips
        self.pool = _Pool(
            [(int(r.start), int(r.end)) for r in config.ranges], frozenset(excluded)
        )
        self.by_ip: dict[int, Lease] = {}
        self.by_client: dict[bytes, Lease] = {}
        self._keys_by_mac: dict[str, set[bytes]] = {}
        self._source_count: dict[bytes, int] = {}
        self._expiry: list[tuple[float, int]] = []
        self._rate: dict[str, list[float]] = {}
        self._prl_cache: dict[bytes, bytes] = {}
        self._head = {
            t: codec.encode_options({o.MESSAGE_TYPE: bytes((t,)), o.SERVER_ID: self.server_id})
            for t in (codec.OFFER, codec.ACK, codec.NAK)
        }
        self._times: dict[int, bytes] = {}
        self._boots = config.boot is not None
        self._exhausted_until = 0.0
        self._exhausted_logged = 0.0
        self.counters: dict[str, int] = dict.fromkeys(
            ("discover", "request", "decline", "release", "inform", "offer", "ack", "nak",
             "ignored", "rate_limited", "exhausted", "mac_cap", "share_cap", "other_server",
             "probe_conflict"),
            0,
        )
        for lease in leases or ():
            self._load(lease)

    # ----- table maintenance -----

    def _load(self, lease: Lease) -> None:
        old = self.by_ip.get(lease.ip)
        if old is not None and old.expires >= lease.expires:
            return
        self.by_ip[lease.ip] = lease
        prev = self.by_client.get(lease.client)
        if prev is None or prev.expires <= lease.expires:
            self.by_client[lease.client] = lease
        self._keys_by_mac.setdefault(lease.mac, set()).add(lease.client)
        if lease.state == BOUND:
            heapq.heappush(self._expiry, (lease.expires, lease.ip))

    def leases(self) -> list[Lease]:
        """Every lease in the table (all states), by address."""
        return [self.by_ip[ip] for ip in sorted(self.by_ip)]

    def expire(self, now: float) -> list[Outcome]:
        """Reclaim bound leases whose time is up: rows to persist and events to publish."""
        out: list[Outcome] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires, ip = heapq.heappop(heap)
            lease = self.by_ip.get(ip)
            if lease is None or lease.state != BOUND or lease.expires != expires:
                continue
            lease.state = EXPIRED
            self._left_bound(lease)
            out.append(self._change(lease, LeaseState.EXPIRED))
        return out

    def _left_bound(self, lease: Lease) -> None:
        if lease.source:
            self._source_count[lease.source] = self._source_count.get(lease.source, 1) - 1
        self._exhausted_until = 0.0

    def _change(self, lease: Lease, state: LeaseState) -> Outcome:
        event = LeaseEvent(
            self.config.network, state, lease.mac, lease.address, lease.hostname, lease.expires
        )
        return Outcome(None, commit=lease.row(self.config.network), event=event)

    # ----- policy helpers -----

    def _rate_ok(self, mac: str, now: float) -> bool:
        rate = self.config.rate_limit
        if rate <= 0:
            return True
        bucket = self._rate.get(mac)
        if bucket is None:
            if len(self._rate) >= MAX_RATE_ENTRIES:
                self._rate.clear()
            self._rate[mac] = [rate - 1.0, now]
            return True
        tokens = min(float(rate), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _reservation(self, pkt: Packet, mac: str) -> Reservation | None:
        cid = pkt.options.get(o.CLIENT_ID)
        if cid is not None and self._res_by_cid:
            res = self._res_by_cid.get(cid)
            if res is not None:
                return res
        return self._res_by_mac.get(mac) if self._res_by_mac else None

    def _free_for(self, ip: int, key: bytes, now: float) -> bool:
        lease = self.by_ip.get(ip)
        if lease is None or (lease.client == key and lease.state != DECLINED):
            return True
        return not lease.holds(now)

    def owns_relay(self, ip: int) -> bool:
        """Whether a relay at ``ip`` (giaddr) sits on this network."""
        return (ip & self._mask) == self._net_first

    def _in_subnet(self, ip: int) -> bool:
        return self._net_first < ip < self._net_last

    def _allocate(self, key: bytes, now: float) -> int | None:
        pool = self.pool
        if pool.size == 0 or now < self._exhausted_until:
            return None
        by_ip = self.by_ip
        for _ in range(pool.size):
            ip = pool.at(pool.cursor)
            pool.cursor = (pool.cursor + 1) % pool.size
            if ip in pool.excluded:
                continue
            lease = by_ip.get(ip)
            if lease is None or not lease.holds(now):
                return ip
        self._exhausted_until = now + 1.0
        return None

    def _may_take_new(self, key: bytes, mac: str, source: bytes, now: float) -> bool:
        """Per-MAC lease cap and per-relay-source pool share for a client without a lease."""
        keys = self._keys_by_mac.get(mac)
        if keys:
            held = sum(
                1
                for k in keys
                if k != key
                and (lease := self.by_client.get(k)) is not None
                and lease.mac == mac
                and lease.state == BOUND
                and lease.expires > now
            )
            if held >= self.config.max_leases_per_mac:
                self.counters["mac_cap"] += 1
                return False
        share = self.config.max_pool_share
        if share < 1.0 and self._source_count.get(source, 0) >= max(1, int(share * self.pool.size)):
            self.counters["share_cap"] += 1
            return False
        return True

    # ----- replies -----

    def _static_options(self, prl: bytes | None) -> bytes:
        """The network-wide options a client asked for (cached per request list)."""
        key = prl or b""
        cached = self._prl_cache.get(key)
        if cached is not None:
            return cached
        cfg = self.config
        want = set(prl) | ALWAYS_SENT if prl else None
        opts: dict[int, bytes] = {}

        def add(code: int, value: bytes) -> None:
            if want is None or code in want:
                opts[code] = value

        add(o.SUBNET_MASK, cfg.subnet.netmask.packed)
        if cfg.router is not None:
            add(o.ROUTER, cfg.router.packed)
        if cfg.dns:
            add(o.DNS_SERVERS, o.ips(cfg.dns))
        if cfg.domain:
            add(o.DOMAIN_NAME, o.text(cfg.domain))
            add(o.DOMAIN_SEARCH, o.domain_search([cfg.domain]))
        add(o.BROADCAST, cfg.subnet.broadcast_address.packed)
        if cfg.mtu:
            add(o.INTERFACE_MTU, o.u16(cfg.mtu))
        if cfg.ntp:
            add(o.NTP_SERVERS, o.ips(cfg.ntp))
        if cfg.routes:
            # RFC 3442: a client that uses 121 ignores option 3, so the default route goes in too.
            routes = [(r.destination, r.gateway) for r in cfg.routes]
            if cfg.router is not None and not any(r.destination.prefixlen == 0 for r in cfg.routes):
                routes.append((ipaddress.IPv4Network("0.0.0.0/0"), cfg.router))
            add(o.CLASSLESS_ROUTES, o.classless_routes(routes))
        block = codec.encode_options(opts)
        if len(self._prl_cache) >= MAX_PRL_CACHE:
            self._prl_cache.clear()
        self._prl_cache[key] = block
        return block

    def _boot(self, pkt: Packet, res: Reservation | None) -> tuple[bytes, bytes, dict[int, bytes]]:
        """(siaddr, file field, options) for PXE / iPXE clients."""
        boot = self.config.boot
        if boot is None and (res is None or not res.boot_file):
            return codec.ZERO_IP, b"", {}
        ipxe = o.is_ipxe(pkt.options)
        bootfile: str | None = None
        if boot is not None and ipxe and boot.ipxe:
            bootfile = boot.ipxe
        elif res is not None and res.boot_file:
            bootfile = res.boot_file
        elif boot is not None:
            arch = o.client_arch(pkt.options)
            arch_files = dict(boot.arch_files)
            bootfile = arch_files.get(arch, boot.file) if arch is not None else boot.file
        extra: dict[int, bytes] = {}
        if boot is not None and ipxe and boot.no_pxedhcp:
            extra[o.IPXE_ENCAP] = o.ipxe_no_pxedhcp()
        if not bootfile:
            return codec.ZERO_IP, b"", extra
        next_server = boot.next_server if boot is not None and boot.next_server else None
        server = next_server or self.config.server_ip
        raw = bootfile.encode()
        if "://" not in bootfile:
            extra[o.TFTP_SERVER_NAME] = str(server).encode()
        extra[o.BOOTFILE_NAME] = raw
        return server.packed, raw if len(raw) <= 128 else b"", extra

    def _reply(
        self,
        pkt: Packet,
        msg_type: int,
        yiaddr: bytes,
        lease_time: int | None,
        res: Reservation | None = None,
        hostname: str | None = None,
        message: str | None = None,
    ) -> Outcome:
        # The option area is assembled from cached pieces: this runs for every reply.
        parts = [self._head[msg_type]]
        siaddr = codec.ZERO_IP
        bootfile = b""
        if msg_type != codec.NAK:
            if lease_time is not None:
                times = self._times.get(lease_time)
                if times is None:
                    times = self._times[lease_time] = codec.encode_options({
                        o.LEASE_TIME: o.u32(lease_time),
                        o.RENEWAL_TIME: o.u32(lease_time // 2),
                        o.REBINDING_TIME: o.u32(lease_time * 7 // 8),
                    })
                parts.append(times)
            if hostname and res is not None and res.name:
                parts.append(codec.encode_options({o.HOSTNAME: hostname.encode()}))
            if self._boots or res is not None:
                siaddr, bootfile, boot_opts = self._boot(pkt, res)
                if boot_opts:
                    parts.append(codec.encode_options(boot_opts))
            parts.append(self._static_options(pkt.options.get(o.PARAMETER_REQUEST_LIST)))
        elif message:
            parts.append(codec.encode_options({o.MESSAGE: message.encode()}))
        echo: dict[int, bytes] = {}
        cid = pkt.options.get(o.CLIENT_ID)
        if cid is not None:
            echo[o.CLIENT_ID] = cid  # RFC 6842
        relay = pkt.options.get(o.RELAY_AGENT_INFO)
        if relay is not None:
            echo[o.RELAY_AGENT_INFO] = relay  # RFC 3046: echoed last
        if echo:
            parts.append(codec.encode_options(echo))
        flags = pkt.flags
        giaddr = pkt.giaddr
        arp_mac = None
        if giaddr != codec.ZERO_IP:
            dest, port = giaddr, SERVER_PORT
            if msg_type == codec.NAK:
                flags |= codec.FLAG_BROADCAST
        elif pkt.ciaddr != codec.ZERO_IP and msg_type != codec.NAK:
            dest, port = pkt.ciaddr, CLIENT_PORT
        elif msg_type == codec.NAK or flags & codec.FLAG_BROADCAST or yiaddr == codec.ZERO_IP:
            dest, port = BROADCAST_IP, CLIENT_PORT
        else:
            dest, port = yiaddr, CLIENT_PORT
            arp_mac = pkt.chaddr[: pkt.hlen] if pkt.htype == 1 and pkt.hlen == 6 else None
            if arp_mac is None:
                dest = BROADCAST_IP
        reply = Packet(
            codec.BOOTREPLY, pkt.htype, pkt.hlen, 0, pkt.xid, 0, flags,
            pkt.ciaddr if msg_type in (codec.ACK, codec.INFORM) else codec.ZERO_IP,
            yiaddr, siaddr, giaddr, pkt.chaddr, b"", bootfile, {},
        )
        return Outcome(codec.encode(reply, b"".join(parts)), dest, port, arp_mac)

    def _nak(self, pkt: Packet, why: str) -> Outcome:
        self.counters["nak"] += 1
        return self._reply(pkt, codec.NAK, codec.ZERO_IP, None, message=why)

    # ----- the state machine -----

    def handle(self, pkt: Packet, now: float) -> Outcome | None:
        """One request -> what to send and persist, or None to stay silent."""
        if pkt.op != codec.BOOTREQUEST:
            self.counters["ignored"] += 1
            return None
        msg_type = pkt.msg_type
        mac = pkt.mac
        if not self._rate_ok(mac, now):
            self.counters["rate_limited"] += 1
            return None
        cid = pkt.options.get(o.CLIENT_ID)
        key = cid if cid else b"\x01" + pkt.chaddr[:6]
        if msg_type == codec.DISCOVER:
            self.counters["discover"] += 1
            return self._discover(pkt, key, mac, now)
        if msg_type == codec.REQUEST:
            self.counters["request"] += 1
            return self._request(pkt, key, mac, now)
        if msg_type == codec.RELEASE:
            self.counters["release"] += 1
            return self._release(pkt, key, now)
        if msg_type == codec.DECLINE:
            self.counters["decline"] += 1
            return self._decline(pkt, key, now)
        if msg_type == codec.INFORM:
            self.counters["inform"] += 1
            res = self._reservation(pkt, mac)
            return self._reply(pkt, codec.ACK, codec.ZERO_IP, None, res, res.name if res else None)
        self.counters["ignored"] += 1
        return None

    def _source(self, pkt: Packet) -> bytes:
        if pkt.giaddr == codec.ZERO_IP:
            return b""
        return pkt.giaddr + pkt.options.get(o.RELAY_AGENT_INFO, b"")

    def _discover(self, pkt: Packet, key: bytes, mac: str, now: float) -> Outcome | None:
        res = self._reservation(pkt, mac)
        ip: int | None = None
        if res is not None:
            ip = int(res.ip)
            if not self._free_for(ip, key, now):
                log.warning(
                    "%s: reserved %s for %s is held by another client", self.config.network,
                    res.ip, mac,
                )
                self.counters["ignored"] += 1
                return None
        else:
            pool = self.pool
            prev = self.by_client.get(key)
            requested = pkt.options.get(o.REQUESTED_IP)
            if prev is not None and pool.contains(prev.ip) and self._free_for(prev.ip, key, now):
                ip = prev.ip
            elif (
                requested is not None
                and len(requested) == 4
                and pool.contains(r := int.from_bytes(requested, "big"))
                and self._free_for(r, key, now)
            ):
                ip = r
            else:
                if not self._may_take_new(key, mac, self._source(pkt), now):
                    return None
                ip = self._allocate(key, now)
                if ip is None:
                    self.counters["exhausted"] += 1
                    if now - self._exhausted_logged >= 10.0:
                        self._exhausted_logged = now
                        log.warning(
                            "%s: address pool exhausted (%d addresses): no offer for %s",
                            self.config.network, pool.size, mac,
                        )
                    return None
        current = self.by_ip.get(ip)
        probe = False
        if current is None or current.client != key or current.state != BOUND:
            prev = self.by_client.get(key)
            if (
                prev is not None
                and prev.state == OFFERED
                and prev.ip != ip
                and self.by_ip.get(prev.ip) is prev
            ):
                del self.by_ip[prev.ip]
            # A repeated DISCOVER for the address just offered was probed already.
            probe = self.config.probe and not (
                current is not None and current.client == key and current.state == OFFERED
                and current.expires > now
            )
            offer = Lease(ip, mac, key, OFFERED, now + self.config.offer_ttl)
            self.by_ip[ip] = offer
            self.by_client[key] = offer
        self.counters["offer"] += 1
        hostname = res.name if res is not None else None
        out = self._reply(
            pkt, codec.OFFER, ip.to_bytes(4, "big"), self.config.lease_time, res, hostname
        )
        if probe:
            out.probe = ip.to_bytes(4, "big")
        return out

    def in_use(self, ip: int, now: float) -> Outcome | None:
        """A probe found ``ip`` answering: quarantine it like a declined address (the client
        that was offered it gets another one when it asks again)."""
        lease = self.by_ip.get(ip)
        if lease is None or lease.state != OFFERED:
            return None
        self.counters["probe_conflict"] += 1
        log.warning(
            "%s: %s answers pings but has no lease: not offered, quarantined for %d s",
            self.config.network, lease.address, self.config.decline_quarantine,
        )
        if self.by_client.get(lease.client) is lease:
            del self.by_client[lease.client]
        quarantined = Lease(ip, "00:00:00:00:00:00", b"", DECLINED,
                            now + self.config.decline_quarantine)
        self.by_ip[ip] = quarantined
        return self._change(quarantined, LeaseState.DECLINED)

    def _request(self, pkt: Packet, key: bytes, mac: str, now: float) -> Outcome | None:
        server_id = pkt.options.get(o.SERVER_ID)
        requested = pkt.options.get(o.REQUESTED_IP)
        if server_id is not None:
            if server_id != self.server_id:
                # SELECTING another server's offer: withdraw ours.
                self.counters["other_server"] += 1
                prev = self.by_client.get(key)
                if prev is not None and prev.state == OFFERED and self.by_ip.get(prev.ip) is prev:
                    del self.by_ip[prev.ip]
                return None
            raw = requested if requested is not None else pkt.ciaddr
        elif requested is not None and pkt.ciaddr == codec.ZERO_IP:
            raw = requested  # INIT-REBOOT
        elif pkt.ciaddr != codec.ZERO_IP:
            raw = pkt.ciaddr  # RENEWING / REBINDING
        else:
            self.counters["ignored"] += 1
            return None
        if len(raw) != 4:
            self.counters["ignored"] += 1
            return None
        ip = int.from_bytes(raw, "big")
        if not self._in_subnet(ip):
            return self._nak(pkt, "address not on this network")
        res = self._reservation(pkt, mac)
        if res is not None:
            if int(res.ip) != ip:
                return self._nak(pkt, "address reserved elsewhere for this client")
        elif not self.pool.contains(ip):
            return self._nak(pkt, "address not in the pool")
        current = self.by_ip.get(ip)
        if current is not None and not self._free_for(ip, key, now):
            return self._nak(pkt, "address in use")
        renewing = (
            current is not None
            and current.client == key
            and current.state == BOUND
            and current.expires > now
        )
        source = self._source(pkt)
        if not renewing:
            prev = self.by_client.get(key)
            has_lease = prev is not None and prev.state in (BOUND, OFFERED) and prev.holds(now)
            if not has_lease and not self._may_take_new(key, mac, source, now):
                return None
        hostname = res.name if res is not None and res.name else _hostname(
            pkt.options.get(o.HOSTNAME)
        )
        lease_time = self.config.lease_time
        if renewing:
            assert current is not None
            lease = current
            lease.expires = now + lease_time
            if hostname:
                lease.hostname = hostname
            lease.mac = mac
        else:
            if current is not None and current.state == BOUND:
                self._left_bound(current)
            lease = Lease(ip, mac, key, BOUND, now + lease_time, hostname, source)
            self.by_ip[ip] = lease
            self.by_client[key] = lease
            keys = self._keys_by_mac.get(mac)
            if keys is None:
                self._keys_by_mac[mac] = {key}
            elif key not in keys:
                keys.add(key)
            if source:
                self._source_count[source] = self._source_count.get(source, 0) + 1
        heapq.heappush(self._expiry, (lease.expires, ip))
        self.counters["ack"] += 1
        out = self._reply(pkt, codec.ACK, raw, lease_time, res, hostname)
        out.commit = lease.row(self.config.network)
        out.event = LeaseEvent(
            self.config.network,
            LeaseState.RENEWED if renewing else LeaseState.BOUND,
            mac,
            ipaddress.IPv4Address(raw),
            lease.hostname,
            lease.expires,
        )
        return out

    def _release(self, pkt: Packet, key: bytes, now: float) -> Outcome | None:
        ip = int.from_bytes(pkt.ciaddr, "big")
        lease = self.by_ip.get(ip)
        if lease is None or lease.client != key or lease.state != BOUND:
            return None
        lease.state = RELEASED
        lease.expires = now
        self._left_bound(lease)
        return self._change(lease, LeaseState.RELEASED)

    def _decline(self, pkt: Packet, key: bytes, now: float) -> Outcome | None:
        server_id = pkt.options.get(o.SERVER_ID)
        requested = pkt.options.get(o.REQUESTED_IP)
        if (server_id is not None and server_id != self.server_id) or requested is None:
            return None
        if len(requested) != 4:
            return None
        ip = int.from_bytes(requested, "big")
        lease = self.by_ip.get(ip)
        if lease is None or lease.client != key or lease.state not in (BOUND, OFFERED):
            return None
        log.warning(
            "%s: %s declined %s (in use by someone else?): quarantined for %d s",
            self.config.network, lease.mac, lease.address, self.config.decline_quarantine,
        )
        if lease.state == BOUND:
            self._left_bound(lease)
        lease.state = DECLINED
        lease.expires = now + self.config.decline_quarantine
        lease.hostname = None
        if self.by_client.get(key) is lease:
            del self.by_client[key]
        return self._change(lease, LeaseState.DECLINED)


__all__ = ["BOUND", "DECLINED", "EXPIRED", "OFFERED", "RELEASED", "DhcpCore", "Outcome",
           "ServerConfig"]
