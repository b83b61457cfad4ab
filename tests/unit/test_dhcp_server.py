"""The DHCP core as a pure function of (packet, lease table, clock): RFC 2131 behaviour."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest

from tests.unit.dhcp_helpers import IP, SERVER, network, request, roundtrip
from vnet.dhcp import codec
from vnet.dhcp import options as o
from vnet.dhcp.lease import BOUND, Lease
from vnet.dhcp.server import BROADCAST_IP, DhcpCore, Outcome, ServerConfig
from vnet.events import LeaseState
from vnet.model import BootSpec, Reservation

MAC = "52:54:00:00:00:01"
T0 = 1_000_000.0
SID = SERVER.packed


def core(**kw: object) -> DhcpCore:
    config = ServerConfig.from_network(network(**kw))  # type: ignore[arg-type]
    assert config is not None
    return DhcpCore(config)


def reply(out: Outcome | None) -> codec.Packet:
    assert out is not None
    assert out.reply is not None
    return codec.decode(out.reply)


def offer(c: DhcpCore, mac: str = MAC, now: float = T0, **opts: bytes) -> codec.Packet:
    return reply(c.handle(roundtrip(request(codec.DISCOVER, mac, **opts)), now))


def bind(c: DhcpCore, mac: str = MAC, now: float = T0, **opts: bytes) -> tuple[bytes, Outcome]:
    """DISCOVER, then REQUEST the offer (SELECTING): the ACKed address and the outcome."""
    yiaddr = offer(c, mac, now, **opts).yiaddr
    out = c.handle(
        roundtrip(request(codec.REQUEST, mac, requested=yiaddr, server_id=SID, **opts)), now
    )
    assert out is not None
    assert reply(out).msg_type == codec.ACK
    return yiaddr, out


def test_discover_request_ack_with_network_options() -> None:
    c = core()
    prl = bytes([1, 3, 6, 15, 26, 28, 42, 119, 121])
    o_pkt = offer(c, prl=prl)
    assert o_pkt.msg_type == codec.OFFER
    assert IP(o_pkt.yiaddr) == IP("10.77.0.100")
    ip, out = bind(c, prl=prl)
    ack = reply(out)
    assert ack.yiaddr == ip
    opts = ack.options
    assert opts[o.SERVER_ID] == SID
    assert opts[o.LEASE_TIME] == (600).to_bytes(4, "big")
    assert opts[o.RENEWAL_TIME] == (300).to_bytes(4, "big")
    assert opts[o.REBINDING_TIME] == (525).to_bytes(4, "big")
    assert opts[o.SUBNET_MASK] == IP("255.255.255.0").packed
    assert opts[o.ROUTER] == SID
    assert opts[o.DNS_SERVERS] == SID
    assert opts[o.DOMAIN_NAME] == b"lab.test"
    assert opts[o.DOMAIN_SEARCH] == b"\x03lab\x04test\x00"
    assert opts[o.INTERFACE_MTU] == (1400).to_bytes(2, "big")
    assert opts[o.BROADCAST] == IP("10.77.0.255").packed
    assert opts[o.NTP_SERVERS] == SID
    assert o.parse_classless_routes(opts[o.CLASSLESS_ROUTES]) == [
        (ipaddress.IPv4Network("192.168.50.0/24"), SERVER),
        (ipaddress.IPv4Network("0.0.0.0/0"), SERVER),
    ]
    # Durable before sent: the row and the event come with the ACK.
    assert out.commit == ("lab", "10.77.0.100", MAC, b"\x01" + bytes.fromhex("525400000001"),
                          None, T0 + 600, BOUND)
    assert out.event is not None
    assert out.event.state is LeaseState.BOUND


def test_options_not_requested_are_not_sent_but_basics_are() -> None:
    c = core()
    _, out = bind(c, prl=bytes([1, 3]))
    opts = reply(out).options
    assert o.SUBNET_MASK in opts
    assert o.ROUTER in opts
    assert o.DNS_SERVERS in opts  # always: a client without DNS is useless
    assert o.CLASSLESS_ROUTES not in opts
    assert o.NTP_SERVERS not in opts


def test_unknown_requested_options_are_ignored() -> None:
    c = core()
    _, out = bind(c, prl=bytes([1, 3, 200, 224, 254, 252]))
    assert set(reply(out).options) >= {o.SUBNET_MASK, o.ROUTER}


def test_request_for_other_server_withdraws_our_offer() -> None:
    c = core(start="10.77.0.100", end="10.77.0.100")
    first = offer(c).yiaddr
    other = IP("10.77.0.254").packed
    assert c.handle(request(codec.REQUEST, requested=first, server_id=other), T0) is None
    assert IP(offer(c, "52:54:00:00:00:02").yiaddr) == IP(first)


def test_two_clients_never_get_the_same_address() -> None:
    c = core()
    seen = {bind(c, f"52:54:00:00:01:{i:02x}")[0] for i in range(50)}
    assert len(seen) == 50


def test_init_reboot_known_client_acked_foreign_subnet_naked() -> None:
    c = core()
    ip, _ = bind(c)
    out = c.handle(request(codec.REQUEST, requested=ip), T0 + 10)
    assert reply(out).msg_type == codec.ACK
    assert out is not None
    assert out.event is not None
    assert out.event.state is LeaseState.RENEWED
    nak = c.handle(request(codec.REQUEST, requested=IP("192.168.9.9").packed), T0 + 10)
    assert reply(nak).msg_type == codec.NAK
    assert nak is not None
    assert nak.dest == BROADCAST_IP
    assert nak.commit is None


def test_init_reboot_for_address_of_another_client_is_naked() -> None:
    c = core()
    ip, _ = bind(c)
    out = c.handle(request(codec.REQUEST, "52:54:00:00:00:99", requested=ip), T0)
    assert reply(out).msg_type == codec.NAK


def test_init_reboot_unknown_client_gets_free_pool_address() -> None:
    """After a lost database the server stays authoritative: a free address is confirmed."""
    c = core()
    wanted = IP("10.77.0.150").packed
    assert reply(c.handle(request(codec.REQUEST, requested=wanted), T0)).msg_type == codec.ACK
    outside = IP("10.77.0.20").packed
    assert reply(c.handle(request(codec.REQUEST, requested=outside), T0)).msg_type == codec.NAK


def test_renewing_is_unicast_to_ciaddr_and_extends_lease() -> None:
    c = core()
    ip, _ = bind(c)
    renew = request(codec.REQUEST, ciaddr=str(IP(ip)))
    out = c.handle(renew, T0 + 300)
    assert out is not None
    assert reply(out).msg_type == codec.ACK
    assert (out.dest, out.port, out.arp_mac) == (ip, 68, None)
    assert reply(out).ciaddr == ip
    assert out.commit is not None
    assert out.commit[5] == T0 + 300 + 600


def test_reply_destinations() -> None:
    c = core()
    # No broadcast flag, no address yet: unicast to yiaddr via the client's MAC.
    out = c.handle(request(codec.DISCOVER), T0)
    assert out is not None
    assert out.dest == reply(out).yiaddr
    assert out.arp_mac == bytes.fromhex("525400000001")
    # Broadcast flag set: broadcast.
    out = c.handle(request(codec.DISCOVER, "52:54:00:00:00:02", flags=0x8000), T0)
    assert out is not None
    assert (out.dest, out.arp_mac) == (BROADCAST_IP, None)
    # Relayed: to the relay's server port, also for NAK (with the broadcast bit).
    relay = IP("10.77.0.2").packed
    out = c.handle(request(codec.DISCOVER, "52:54:00:00:00:03", giaddr="10.77.0.2"), T0)
    assert out is not None
    assert (out.dest, out.port) == (relay, 67)
    assert reply(out).giaddr == relay
    nak = c.handle(
        request(codec.REQUEST, "52:54:00:00:00:03", giaddr="10.77.0.2",
                requested=IP("10.1.1.1").packed),
        T0,
    )
    assert nak is not None
    assert (nak.dest, nak.port) == (relay, 67)
    assert reply(nak).flags & 0x8000


def test_client_id_and_relay_info_are_echoed() -> None:
    c = core()
    pkt = offer(c, client_id=b"\xff\x00\x01\x02", relay=b"\x01\x04port")
    assert pkt.options[o.CLIENT_ID] == b"\xff\x00\x01\x02"
    assert pkt.options[o.RELAY_AGENT_INFO] == b"\x01\x04port"


def test_client_id_distinguishes_clients_with_one_mac() -> None:
    c = core()
    a, _ = bind(c, client_id=b"\x01a")
    b, _ = bind(c, client_id=b"\x01b")
    assert a != b


def test_expiry_without_sleeping_frees_the_address() -> None:
    c = core()
    ip, _ = bind(c)
    assert c.expire(T0 + 599) == []
    outs = c.expire(T0 + 601)
    assert [(e.event.state, e.event.ip) for e in outs if e.event] == [
        (LeaseState.EXPIRED, IP(ip))
    ]
    assert outs[0].commit is not None
    assert outs[0].commit[6] == "expired"
    # The same client coming back gets the same address (stable assignment)...
    assert offer(c, now=T0 + 700).yiaddr == ip
    # ...and renewing a lease that expired meanwhile is confirmed if still free.
    assert reply(c.handle(request(codec.REQUEST, requested=ip), T0 + 700)).msg_type == codec.ACK


def test_expired_address_goes_to_another_client_when_pool_is_full() -> None:
    c = core(start="10.77.0.100", end="10.77.0.100")
    ip, _ = bind(c)
    assert c.handle(request(codec.DISCOVER, "52:54:00:00:00:02"), T0 + 10) is None
    c.expire(T0 + 601)
    assert offer(c, "52:54:00:00:00:02", now=T0 + 601).yiaddr == ip


def test_release_frees_the_address() -> None:
    c = core(start="10.77.0.100", end="10.77.0.100")
    ip, _ = bind(c)
    out = c.handle(request(codec.RELEASE, ciaddr=str(IP(ip)), server_id=SID), T0 + 5)
    assert out is not None
    assert out.reply is None
    assert out.event is not None
    assert out.event.state is LeaseState.RELEASED
    assert out.commit is not None
    assert out.commit[6] == "released"
    assert offer(c, "52:54:00:00:00:02", now=T0 + 6).yiaddr == ip
    # A release for someone else's lease changes nothing.
    assert c.handle(request(codec.RELEASE, MAC, ciaddr=str(IP(ip))), T0 + 7) is None


def test_decline_quarantines_the_address() -> None:
    c = core(start="10.77.0.100", end="10.77.0.101")
    ip, _ = bind(c)
    out = c.handle(request(codec.DECLINE, requested=ip, server_id=SID), T0 + 1)
    assert out is not None
    assert out.event is not None
    assert out.event.state is LeaseState.DECLINED
    # Neither the decliner nor anyone else gets it during the quarantine.
    assert offer(c, now=T0 + 2).yiaddr != ip
    assert c.handle(request(codec.DISCOVER, "52:54:00:00:00:02"), T0 + 2) is None
    assert offer(c, "52:54:00:00:00:02", now=T0 + 1000).yiaddr == ip


def test_inform_gets_options_without_lease() -> None:
    c = core()
    out = c.handle(request(codec.INFORM, ciaddr="10.77.0.33", prl=bytes([1, 3, 6])), T0)
    pkt = reply(out)
    assert pkt.msg_type == codec.ACK
    assert pkt.yiaddr == codec.ZERO_IP
    assert o.LEASE_TIME not in pkt.options
    assert pkt.options[o.ROUTER] == SID
    assert out is not None
    assert out.dest == IP("10.77.0.33").packed
    assert out.commit is None


def test_reservation_by_mac_and_by_client_id() -> None:
    reservations = (
        Reservation(mac="52:54:00:00:00:10", ip=IP("10.77.0.10"), name="web1"),
        Reservation(mac=None, ip=IP("10.77.0.11"), name="db1", client_id=b"\x00db1"),
    )
    c = core(reservations=reservations)
    ip, out = bind(c, "52:54:00:00:00:10", prl=bytes([1, 12]))
    assert IP(ip) == IP("10.77.0.10")
    assert reply(out).options[o.HOSTNAME] == b"web1"
    assert out.event is not None
    assert out.event.hostname == "web1"
    ip, _ = bind(c, "52:54:00:00:00:77", client_id=b"\x00db1")
    assert IP(ip) == IP("10.77.0.11")
    # The reserved client asking for another address is told no; nobody else gets .10.
    nak = c.handle(
        request(codec.REQUEST, "52:54:00:00:00:10", requested=IP("10.77.0.150").packed), T0
    )
    assert reply(nak).msg_type == codec.NAK
    others = {bind(c, f"52:54:00:00:02:{i:02x}")[0] for i in range(100)}
    assert IP("10.77.0.10").packed not in others
    assert IP("10.77.0.11").packed not in others


def test_client_hostname_is_kept_when_valid() -> None:
    c = core()
    _, out = bind(c, hostname=b"Build-7")
    assert out.event is not None
    assert out.event.hostname == "build-7"
    _, out = bind(c, "52:54:00:00:00:02", hostname=b"bad name;rm")
    assert out.event is not None
    assert out.event.hostname is None


def test_pool_exhaustion_logs_and_offers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    c = core(start="10.77.0.100", end="10.77.0.101")
    bind(c, "52:54:00:00:00:01")
    bind(c, "52:54:00:00:00:02")
    with caplog.at_level(logging.WARNING):
        assert c.handle(request(codec.DISCOVER, "52:54:00:00:00:03"), T0) is None
    assert "address pool exhausted (2 addresses)" in caplog.text
    assert c.counters["exhausted"] == 1


def test_rate_limit_per_mac_refills_over_time() -> None:
    c = core(rate_limit=10)
    answered = sum(
        c.handle(request(codec.DISCOVER), T0) is not None for _ in range(100)
    )
    assert answered == 10
    assert c.counters["rate_limited"] == 90
    # Another MAC is not affected, and the flooder gets answers again a second later.
    assert c.handle(request(codec.DISCOVER, "52:54:00:00:00:02"), T0) is not None
    assert c.handle(request(codec.DISCOVER), T0 + 1.0) is not None


def test_one_mac_cannot_drain_the_pool_with_client_ids() -> None:
    c = core()
    bound = 0
    for i in range(20):
        out = c.handle(request(codec.DISCOVER, client_id=bytes([0, i])), T0 + i)
        if out is None:
            continue
        ack = c.handle(
            request(codec.REQUEST, client_id=bytes([0, i]), requested=reply(out).yiaddr,
                    server_id=SID),
            T0 + i,
        )
        bound += ack is not None and reply(ack).msg_type == codec.ACK
    assert bound == c.config.max_leases_per_mac
    assert c.counters["mac_cap"] > 0


def test_relay_source_limited_to_its_share_of_the_pool() -> None:
    c = core(max_pool_share=0.1)  # 100 addresses: a relay port may hold 10
    got = 0
    for i in range(30):
        mac = f"52:54:00:00:03:{i:02x}"
        out = c.handle(request(codec.DISCOVER, mac, giaddr="10.77.0.2", relay=b"\x01\x01A"), T0)
        if out is None:
            continue
        ack = c.handle(
            request(codec.REQUEST, mac, giaddr="10.77.0.2", relay=b"\x01\x01A",
                    requested=reply(out).yiaddr, server_id=SID),
            T0,
        )
        got += ack is not None and reply(ack).msg_type == codec.ACK
    assert got == 10
    # Another relay port still gets addresses.
    out = c.handle(request(codec.DISCOVER, "52:54:00:00:04:01", giaddr="10.77.0.2",
                           relay=b"\x01\x01B"), T0)
    assert out is not None


def test_leases_loaded_at_start_are_honoured() -> None:
    config = ServerConfig.from_network(network())
    assert config is not None
    key = b"\x01" + bytes.fromhex("525400000001")
    held = Lease(int(IP("10.77.0.120")), MAC, key, BOUND, T0 + 500)
    c = DhcpCore(config, [held])
    assert IP(offer(c).yiaddr) == IP("10.77.0.120")
    assert reply(c.handle(request(codec.REQUEST, "52:54:00:00:00:02",
                                  requested=IP("10.77.0.120").packed), T0)).msg_type == codec.NAK
    assert [e.event.ip for e in c.expire(T0 + 501) if e.event] == [IP("10.77.0.120")]


# ----- PXE / iPXE boot options (issue 4 relies on these) -----

BOOT = BootSpec(
    file="undionly.kpxe",
    arch_files=((7, "ipxe.efi"), (9, "ipxe.efi")),
    ipxe="http://10.77.0.1/boot.ipxe",
    no_pxedhcp=True,
)


def test_bios_pxe_client_gets_file_and_next_server() -> None:
    pkt = offer(core(boot=BOOT), arch=b"\x00\x00")
    assert pkt.siaddr == SID
    assert pkt.file == b"undionly.kpxe"
    assert pkt.options[o.BOOTFILE_NAME] == b"undionly.kpxe"
    assert pkt.options[o.TFTP_SERVER_NAME] == b"10.77.0.1"
    assert o.IPXE_ENCAP not in pkt.options


def test_uefi_client_gets_its_architecture_file() -> None:
    pkt = offer(core(boot=BOOT), arch=b"\x00\x07")
    assert pkt.file == b"ipxe.efi"


@pytest.mark.parametrize("user_class", [b"iPXE", b"\x04iPXE"], ids=["raw", "rfc3004"])
def test_ipxe_client_chainloads_and_skips_proxydhcp_wait(user_class: bytes) -> None:
    pkt = offer(core(boot=BOOT), user_class=user_class)
    assert pkt.file == b"http://10.77.0.1/boot.ipxe"
    assert pkt.options[o.BOOTFILE_NAME] == b"http://10.77.0.1/boot.ipxe"
    assert pkt.options[o.IPXE_ENCAP] == bytes((176, 1, 1))
    assert o.TFTP_SERVER_NAME not in pkt.options  # a URL needs no TFTP server


def test_reservation_boot_file_and_next_server() -> None:
    boot = BootSpec(file="default.kpxe", next_server=IP("10.77.0.5"))
    res = (Reservation(mac=MAC, ip=IP("10.77.0.10"), boot_file="special.kpxe"),)
    pkt = offer(core(boot=boot, reservations=res))
    assert pkt.file == b"special.kpxe"
    assert pkt.siaddr == IP("10.77.0.5").packed
    assert pkt.options[o.TFTP_SERVER_NAME] == b"10.77.0.5"
    assert offer(core(boot=boot), "52:54:00:00:00:02").file == b"default.kpxe"


def test_no_boot_options_without_boot_config() -> None:
    pkt = offer(core())
    assert (pkt.siaddr, pkt.file) == (codec.ZERO_IP, b"")
    assert o.BOOTFILE_NAME not in pkt.options


def test_probe_requested_for_new_offers_and_conflicts_quarantined() -> None:
    config = ServerConfig.from_network(network())
    assert config is not None
    c = DhcpCore(dataclasses.replace(config, probe=True))
    out = c.handle(request(codec.DISCOVER), T0)
    assert out is not None
    assert out.probe == IP("10.77.0.100").packed
    # A retransmitted DISCOVER gets the same offer without a second probe.
    again = c.handle(request(codec.DISCOVER), T0 + 1)
    assert again is not None
    assert again.probe is None
    # The address answered: quarantined, durable, and the client is offered another one.
    conflict = c.in_use(int(IP("10.77.0.100")), T0 + 1)
    assert conflict is not None
    assert conflict.event is not None
    assert conflict.event.state is LeaseState.DECLINED
    assert offer(c, now=T0 + 2).yiaddr == IP("10.77.0.101").packed
    assert core().handle(request(codec.DISCOVER), T0).probe is None  # type: ignore[union-attr]
