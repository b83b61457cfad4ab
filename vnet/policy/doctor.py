"""``vnet doctor``: what on this host breaks guest networking, why, and the fix. Pure.

The command gathers ``HostFacts`` (sysctls, the headers of base chains in other tables, whether
vnet's tables are loaded, legacy iptables tables) and ``diagnose`` turns them into findings.
Each finding names the object, explains the effect on guests, and gives a fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vnet.model import Mode, Model


@dataclass(frozen=True)
class BaseChain:
    family: str
    table: str
    name: str
    hook: str
    prio: int
    policy: str


@dataclass(frozen=True)
class HostFacts:
    sysctls: dict[str, str] = field(default_factory=dict)  # absent key: not available
    foreign_chains: tuple[BaseChain, ...] = ()
    vnet_tables: tuple[str, ...] = ()  # families of vnet's tables that are loaded
    legacy_iptables: tuple[str, ...] = ()  # /proc/net/ip_tables_names (x_tables in use)
    mac_mismatches: dict[str, int] = field(default_factory=dict)  # port -> frames, from nft
    unknown_ports: dict[str, list[str]] = field(default_factory=dict)  # network -> ifnames


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" (guests break) or "warning"
    title: str
    why: str
    fix: str


BRNF = {"ip": "net.bridge.bridge-nf-call-iptables", "ip6": "net.bridge.bridge-nf-call-ip6tables"}
FORWARD = "net.ipv4.ip_forward"
SYSCTLS = (*BRNF.values(), FORWARD)


def _port_findings(model: Model, facts: HostFacts) -> list[Finding]:
    out: list[Finding] = []
    guests = {g.ifname: (n, g) for n in model.networks for g in n.guests}
    for ifname, frames in sorted(facts.mac_mismatches.items()):
        if not frames or ifname not in guests:
            continue
        net, g = guests[ifname]
        out.append(Finding(
            "error", f"port {ifname} (guest {g.name}, network {net.name}): {frames} frames "
            f"from a MAC other than {g.mac}",
            "The guest's NIC does not use the MAC it was declared with: anti-spoofing drops its "
            "frames and DHCP never sees its real address, so it gets no lease.",
            f"give the guest NIC mac={g.mac} (QEMU -device ...,mac=; libvirt <mac address>), "
            "or declare the MAC it really has"))
    for network, ports in sorted(facts.unknown_ports.items()):
        owner = model.network(network)
        treatment = "isolated (DHCP to vnet only)" if owner is None or owner.unknown_ports == \
            "isolated" else "allowed (unknown-ports: allow)"
        out.append(Finding(
            "warning", f"network {network}: ports on its bridge that are no guest's: "
            + ", ".join(ports),
            f"Something enslaved them without vnet; they are {treatment} and get no policies.",
            "declare the guest (guests[].ifname), attach it (vnet guest add ... --ifname), or "
            "use vnet's QEMU/libvirt hooks (docs/hooks.md)"))
    return out


def diagnose(model: Model, facts: HostFacts) -> list[Finding]:
    out: list[Finding] = _port_findings(model, facts)
    filtered = [n for n in model.networks if n.bridge is not None and n.mode != Mode.OPEN]
    routed = [n for n in model.networks if n.mode in (Mode.NAT, Mode.ROUTE)]
    bridges = sorted(n.bridge.name for n in filtered if n.bridge is not None)
    with_policies = [n for n in filtered if n.policies or any(g.policies for g in n.guests)]

    if with_policies:
        missing = [fam for fam, key in BRNF.items() if key not in facts.sysctls]
        off = [fam for fam, key in BRNF.items() if facts.sysctls.get(key) == "0"]
        if missing:
            out.append(Finding(
                "error", "br_netfilter is not loaded",
                "Without it the inet table never sees bridged packets: vnet then filters IPv4/"
                "IPv6 statelessly in the bridge table, where 'state' rules do nothing, so "
                "replies to guests' own connections are dropped by policies that default to "
                "drop inbound (web-server).",
                "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/vnet.conf; "
                "then vnet apply"))
        elif off:
            keys = ", ".join(BRNF[f] for f in off)
            out.append(Finding(
                "error", f"{keys} = 0",
                "Bridged packets of these families skip the inet table: vnet filters them "
                "statelessly in the bridge table ('state' rules inactive).",
                "sysctl -w " + " ".join(f"{BRNF[f]}=1" for f in off)
                + " (persist in /etc/sysctl.d/); then vnet apply"))
    if routed and facts.sysctls.get(FORWARD, "0") != "1":
        names = ", ".join(n.name for n in routed)
        out.append(Finding(
            "error", f"{FORWARD} = {facts.sysctls.get(FORWARD, 'unknown')}",
            f"Networks {names} (nat/route) need the host to forward IPv4: guests reach "
            "nothing beyond the host.",
            f"sysctl -w {FORWARD}=1 (persist in /etc/sysctl.d/)"))
    for chain in facts.foreign_chains:
        if chain.policy != "drop" or chain.hook not in ("forward", "input", "prerouting"):
            continue
        bridged = chain.family in ("ip", "ip6", "inet") and chain.hook == "forward"
        effect = {
            "forward": "forwarded guest traffic (NAT/routed, and with br_netfilter also "
                       "traffic between guests on one bridge)",
            "input": "guests' DHCP, DNS and TFTP requests to this host",
            "prerouting": "every packet from guests",
        }[chain.hook]
        hint = (" This is Docker's FORWARD chain; Docker also drops bridged traffic once "
                "br_netfilter is loaded." if chain.table == "filter" and chain.name == "FORWARD"
                else "")
        accept = "; ".join(f'nft insert rule {chain.family} {chain.table} {chain.name} '
                           f'{d}ifname "{b}" accept' for b in bridges for d in ("i", "o"))
        docker = (f"; with Docker: iptables -I DOCKER-USER -i {bridges[0]} -j ACCEPT and "
                  f"-o {bridges[0]} -j ACCEPT" if bridges and hint else "")
        out.append(Finding(
            "error" if bridges else "warning",
            f"{chain.family} {chain.table} chain {chain.name} (hook {chain.hook}, priority "
            f"{chain.prio}) drops by default",
            f"A drop anywhere is final: vnet's accept in its own table cannot override it, so "
            f"{effect} that this chain does not accept explicitly is dropped."
            + hint + (" Affects bridged traffic too." if bridged else ""),
            (accept or "allow vnet's bridges in that chain") + docker))
    if facts.legacy_iptables:
        out.append(Finding(
            "warning", "legacy iptables tables are in use: " + ", ".join(facts.legacy_iptables),
            "vnet cannot read them; their FORWARD/INPUT rules (e.g. Docker on iptables-legacy) "
            "apply to guest traffic too.",
            "check `iptables-legacy -S FORWARD` and `-S INPUT` for DROP policies and allow "
            "vnet's bridges: " + ", ".join(bridges or ["(none)"])))
    if filtered and not facts.vnet_tables:
        out.append(Finding(
            "warning", "vnet's nftables tables are not loaded",
            "Guest policies, NAT and forwarding rules are not in effect.",
            "vnet apply"))
    return out
