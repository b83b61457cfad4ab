"""What a guest hook is given, parsed and checked: the input side of ``vnet.hook``. Pure.

It must not read stdin or files, talk to the API or touch the kernel: callers pass in argv (without
the program name) and the bytes they read, and get frozen values or one ``HookInputError`` whose
message is a single line naming what is wrong and where.

QEMU ``script=``/``downscript=``
    QEMU runs ``SCRIPT IFNAME`` and waits; a non-zero exit fails the netdev. ``parse_qemu_argv``
    takes ``[IFNAME]`` and returns the TAP name once the kernel would accept it.

libvirt's qemu hook (``/etc/libvirt/hooks/qemu.d/vnet GUEST OP SUBOP EXTRA``, domain XML on stdin)
    ``parse_libvirt_argv`` takes exactly those four arguments (libvirt always passes four; EXTRA is
    ``-`` or, for ``release end`` since libvirt 10.5, the shutoff reason). ``LibvirtCall.action``:

    ==================  ==========  =====================================================
    OP SUBOP            action      meaning for vnet
    ==================  ==========  =====================================================
    prepare begin       prepare     before QEMU starts: create/attach the guest's ports
    release end         release     after the guest stopped (also after a failed start)
    reconnect begin     reconnect   libvirtd restarted: make sure running guests' ports exist
    attach begin        reconnect   the same, for a QEMU process libvirt attaches to
    migrate begin       migrate     incoming migration: check the XML (prepare follows), print nothing
    anything else       noop        exit 0 (start, started, stopped, restore, ops libvirt adds later)
    ==================  ==========  =====================================================

Guest (libvirt domain) names: non-empty, valid UTF-8, at most ``MAX_GUEST_NAME`` (200) bytes (so
``vnet:<net>:port:<name>`` fits the kernel's 256-byte ifalias; libvirt's own bound is the file
name ``<name>.xml``, 255 bytes), only printable characters (space included, but not at either end), not
starting with '-', and none of ``/ ; | & $ ` < > ( ) \\ ' " * ? [ ] { } !``. Nothing vnet does
passes a name to a shell; the refusal keeps names safe to paste from logs, nft comments and
ifaliases into one, and keeps odd names from reading as options or globs.

Domain XML (``parse_domain``): at most ``MAX_XML`` (4 MiB; read ``MAX_XML + 1`` bytes so a bigger
stdin is caught) bytes, parsed by defusedxml with DTDs, entities
and external references refused (libvirt never sends any). Read are ``<name>``, ``<uuid>``, each
``<devices><interface>`` (type, ``<mac address>``, ``<target dev managed>``, ``<source bridge>``,
``<model type>``) and vnet's own metadata, one element in namespace ``VNET_XMLNS``::

    <metadata>
      <vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
        <vnet:port mac="52:54:00:aa:bb:01" network="lab" guest="web1">
          <vnet:policy name="clean-traffic"/>
          <vnet:policy name="web"/>
        </vnet:port>
        <vnet:port dev="vm1tap" network="lab"/>
      </vnet:ports>
    </metadata>

``vnet:port`` attributes: ``network`` (required, a vnet network name), ``mac`` and/or ``dev`` (at
least one; the port belongs to the one interface whose MAC and target dev match all that are
given), ``guest`` (a vnet guest name as in definition files: letters, digits, '-', '_', '.', at
most 63; default: the domain name when the domain has one vnet port,
else ``<domain name>-<N>`` with N the interface's 1-based position among ``<interface>``s, which
moves if interfaces are reordered, so set ``guest`` when it matters). Each ``vnet:policy`` names
one policy, in order. Unknown attributes or elements in the namespace are refused, as is a port
that matches no interface, or one interface claimed by two ports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from vnet.errors import HookError
from vnet.model import IFNAMSIZ, check_ifname, normalize_mac

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

MAX_XML = 4 * 1024 * 1024
MAX_GUEST_NAME = 200
MAX_TOKEN = 64  # OP, SUBOP and EXTRA are short words libvirt picks
VNET_XMLNS = "http://vnet.dev/xmlns/libvirt/1"

Action = Literal["prepare", "release", "reconnect", "migrate", "noop"]

_ACTIONS: dict[tuple[str, str], Action] = {
    ("prepare", "begin"): "prepare",
    ("release", "end"): "release",
    ("reconnect", "begin"): "reconnect",
    ("attach", "begin"): "reconnect",
    ("migrate", "begin"): "migrate",
}

_REFUSED_IN_NAMES = "/;|&$`<>()\\'\"*?[]{}!"
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
# The same rules as vnet.config.network applies to definition files.
_NET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_GUEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PORT_ATTRS = ("dev", "guest", "mac", "network")


class HookInputError(HookError):
    """A hook's argv or domain XML is malformed or unsafe; the message is one line."""


@dataclass(frozen=True)
class LibvirtCall:
    """One invocation of libvirt's qemu hook: ``GUEST OP SUBOP EXTRA``."""

    guest: str
    op: str
    subop: str
    extra: str

    @property
    def action(self) -> Action:
        return _ACTIONS.get((self.op, self.subop), "noop")

    @property
    def reason(self) -> str | None:
        """The shutoff reason of ``release end`` (libvirt >= 10.5), else None."""
        return None if self.extra == "-" else self.extra


@dataclass(frozen=True)
class Interface:
    """One ``<devices><interface>``; the ``vnet_*`` fields come from a matching ``vnet:port``."""

    index: int  # 1-based position among the domain's interfaces, as in error messages
    type: str  # 'ethernet', 'bridge', 'network', or any other libvirt interface type
    mac: str | None
    target_dev: str | None
    managed: bool
    source_bridge: str | None
    model: str | None
    vnet_network: str | None = None
    vnet_guest: str | None = None
    vnet_policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str  # lower case, 8-4-4-4-12
    interfaces: tuple[Interface, ...]

    @property
    def vnet_interfaces(self) -> tuple[Interface, ...]:
        return tuple(i for i in self.interfaces if i.vnet_network is not None)


@dataclass(frozen=True)
class _Port:
    index: int
    network: str
    mac: str | None
    dev: str | None
    guest: str | None
    policies: tuple[str, ...]

    def describe(self) -> str:
        keys = [f"mac {self.mac}" if self.mac else "", f"dev {self.dev}" if self.dev else ""]
        return f"vnet port {self.index} ({', '.join(k for k in keys if k)})"


def _show(text: str, limit: int = 40) -> str:
    """``repr`` of at most ``limit`` characters: always one line, never huge."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _utf8_problem(text: str) -> str | None:
    """Why ``text`` (possibly decoded with surrogateescape) is not valid UTF-8, or None."""
    for c in text:
        if "\ud800" <= c <= "\udfff":
            code = ord(c)
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            return f"is not valid UTF-8 ({what})"
    return None


def check_domain_name(name: str, what: str = "guest name") -> str:
    """Return ``name`` if it passes the guest-name rules in the module docstring, else raise."""
    if not name:
        raise HookInputError(f"{what} is empty")
    if problem := _utf8_problem(name):
        raise HookInputError(f"{what} {_show(name)} {problem}")
    size = len(name.encode())
    if size > MAX_GUEST_NAME:
        raise HookInputError(f"{what} {_show(name)} is {size} bytes, vnet allows {MAX_GUEST_NAME}")
    for c in name:
        if not c.isprintable():
            raise HookInputError(f"{what} {_show(name)} contains the non-printable character {c!r}")
        if c in _REFUSED_IN_NAMES:
            raise HookInputError(f"{what} {_show(name)} contains {c!r}")
    if name.startswith("-"):
        raise HookInputError(f"{what} {_show(name)} starts with '-'")
    if name != name.strip():
        raise HookInputError(f"{what} {_show(name)} starts or ends with a space")
    return name


def _check_token(text: str, what: str) -> str:
    if not text:
        raise HookInputError(f"{what} is empty")
    if problem := _utf8_problem(text):
        raise HookInputError(f"{what} {_show(text)} {problem}")
    if len(text.encode()) > MAX_TOKEN:
        raise HookInputError(f"{what} {_show(text)} is longer than {MAX_TOKEN} bytes")
    if not text.isprintable():
        raise HookInputError(f"{what} {_show(text)} contains a non-printable character")
    return text


def _check_ifname(text: str, what: str) -> str:
    """``check_ifname`` with messages that name the field and stay one short line."""
    if not text:
        raise HookInputError(f"{what} is empty")
    if problem := _utf8_problem(text):
        raise HookInputError(f"{what} {_show(text)} {problem}")
    size = len(text.encode())
    if size > IFNAMSIZ:
        raise HookInputError(f"{what} {_show(text)} is {size} bytes, the kernel allows {IFNAMSIZ}")
    try:
        check_ifname(text)
    except ValueError as err:
        bad = next((c for c in text if c in "/:\0" or c.isspace()), None)
        detail = f"contains {bad!r}" if bad else "is reserved"
        raise HookInputError(f"{what} {_show(text)} {detail}, the kernel refuses it") from err
    # The kernel also refuses \v \f \r (isspace); other non-printables would garble logs.
    bad = next((c for c in text if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise HookInputError(f"{what} {_show(text)} contains {bad!r}")
    return text


def _check_mac(text: str, what: str) -> str:
    if not _MAC.match(text):  # normalize_mac alone would let int() accept ' 1' or '+1'
        raise HookInputError(f"{what} {_show(text)} is not a MAC address (want six hex pairs, e.g. 52:54:00:00:00:01)")
    return normalize_mac(text)


def parse_qemu_argv(argv: Sequence[str]) -> str:
    """``[IFNAME]`` as QEMU passes it to ``script=``/``downscript=`` -> the TAP name."""
    if len(argv) != 1:
        raise HookInputError(f"want exactly one argument (the TAP interface name), got {len(argv)}")
    return _check_ifname(argv[0], "interface name")


def parse_libvirt_argv(argv: Sequence[str]) -> LibvirtCall:
    """``[GUEST, OP, SUBOP, EXTRA]`` as libvirt passes them to a qemu hook -> LibvirtCall."""
    if len(argv) != 4:
        raise HookInputError(f"want exactly four arguments (GUEST OP SUBOP EXTRA), got {len(argv)}")
    guest, op, subop, extra = argv
    return LibvirtCall(
        guest=check_domain_name(guest),
        op=_check_token(op, "operation"),
        subop=_check_token(subop, "sub-operation"),
        extra=_check_token(extra, "extra argument"),
    )


def parse_domain(xml: bytes | str) -> Domain:
    """Domain XML as libvirt writes it to a hook's stdin -> Domain (see the module docstring)."""
    root = _parse_xml(xml)
    if root.tag != "domain":
        raise HookInputError(f"domain XML: the root element is {_show(str(root.tag))}, want 'domain'")
    name = check_domain_name(root.findtext("name") or "", "domain XML: <name>")
    uuid = root.findtext("uuid") or ""
    if not _UUID.match(uuid):
        raise HookInputError(f"domain XML: <uuid> {_show(uuid)} is not a UUID")
    interfaces = [_parse_interface(i, el) for i, el in enumerate(root.iterfind("devices/interface"), 1)]
    ports = _parse_metadata(root.find("metadata"))
    return Domain(name=name, uuid=uuid.lower(), interfaces=_bind_ports(name, interfaces, ports))


def _parse_xml(text: bytes | str) -> Element:
    """``text`` -> its root element; size is counted in bytes (characters when given a str)."""
    if len(text) > MAX_XML:
        raise HookInputError(f"domain XML is {len(text)} bytes, more than the {MAX_XML} vnet reads")
    if not text.strip():
        raise HookInputError("domain XML is empty (nothing on stdin)")
    # Imported here: it costs a few ms, and the QEMU script path never needs it.
    from xml.etree.ElementTree import ParseError
    from xml.parsers.expat import ErrorString

    import defusedxml
    import defusedxml.ElementTree

    try:
        root: Element = defusedxml.ElementTree.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except ParseError as err:
        line, column = err.position  # expat counts columns from 0
        reason = ErrorString(err.code)
        raise HookInputError(f"domain XML is not well-formed: line {line}, column {column + 1}: {reason}") from err
    except defusedxml.DTDForbidden as err:
        points = f"; it points at {_show(err.sysid)}" if err.sysid else ""
        raise HookInputError(f"domain XML: a document type declaration (<!DOCTYPE>) is refused{points}") from err
    except defusedxml.EntitiesForbidden as err:
        raise HookInputError("domain XML: entity declarations are refused") from err
    except defusedxml.ExternalReferenceForbidden as err:
        raise HookInputError("domain XML: external references are refused") from err
    except UnicodeEncodeError as err:  # a str holding surrogate escapes of undecodable bytes
        raise HookInputError(f"domain XML is not valid UTF-8 (character {err.start})") from err
    return root


def _parse_interface(index: int, el: Element) -> Interface:
    where = f"domain XML: interface {index}:"
    kind = el.get("type")
    if not kind:
        raise HookInputError(f"{where} no type attribute")
    mac_el, target, source, model = el.find("mac"), el.find("target"), el.find("source"), el.find("model")
    mac = None
    if mac_el is not None:
        mac = _check_mac(mac_el.get("address", ""), f"{where} mac")
    dev, managed = None, True
    if target is not None:
        if (text := target.get("dev")) is not None:
            dev = _check_ifname(text, f"{where} target dev")
        flag = target.get("managed", "yes")
        if flag not in ("yes", "no"):
            raise HookInputError(f"{where} target managed={_show(flag)}, want 'yes' or 'no'")
        managed = flag == "yes"
    bridge = None
    if kind == "bridge" and source is not None and (text := source.get("bridge")) is not None:
        bridge = _check_ifname(text, f"{where} source bridge")
    return Interface(
        index=index,
        type=kind,
        mac=mac,
        target_dev=dev,
        managed=managed,
        source_bridge=bridge,
        model=model.get("type") if model is not None else None,
    )


def _parse_metadata(metadata: Element | None) -> list[_Port]:
    if metadata is None:
        return []
    ns = f"{{{VNET_XMLNS}}}"
    ours = [el for el in metadata if str(el.tag).startswith(ns)]
    stray = [el for el in ours if el.tag != f"{ns}ports"]
    if stray:
        tag = str(stray[0].tag).removeprefix(ns)
        raise HookInputError(f"domain XML: metadata: <vnet:{_show(tag)[1:-1]}> must be inside <vnet:ports>")
    if len(ours) > 1:
        raise HookInputError("domain XML: metadata: more than one <vnet:ports> element")
    if not ours:
        return []
    ports: list[_Port] = []
    for index, el in enumerate(ours[0], 1):
        if el.tag != f"{ns}port":
            raise HookInputError(f"domain XML: <vnet:ports> may hold only <vnet:port>, found {_tag(el, ns)}")
        ports.append(_parse_port(index, el, ns))
    return ports


def _tag(el: Element, ns: str) -> str:
    tag = str(el.tag)
    return "<" + _show(f"vnet:{tag.removeprefix(ns)}" if tag.startswith(ns) else tag)[1:-1] + ">"


def _parse_port(index: int, el: Element, ns: str) -> _Port:
    where = f"domain XML: vnet port {index}:"
    for key in el.attrib:
        if key not in _PORT_ATTRS:
            raise HookInputError(f"{where} unknown attribute {_show(key)} (known: {', '.join(_PORT_ATTRS)})")
    network = el.get("network")
    if network is None:
        raise HookInputError(f"{where} no network attribute")
    if not _NET_NAME.match(network):
        raise HookInputError(f"{where} network {_show(network)} is not a vnet network name")
    mac_text, dev_text, guest = el.get("mac"), el.get("dev"), el.get("guest")
    if mac_text is None and dev_text is None:
        raise HookInputError(f"{where} needs a mac or a dev attribute to find its interface")
    if guest is not None and not _GUEST_NAME.match(guest):
        raise HookInputError(f"{where} guest {_show(guest)}: use letters, digits, '-', '_', '.' (max 63)")
    policies: list[str] = []
    for child in el:
        if child.tag != f"{ns}policy":
            raise HookInputError(f"{where} may hold only <vnet:policy>, found {_tag(child, ns)}")
        name = child.get("name")
        if name is None or set(child.attrib) != {"name"}:
            raise HookInputError(f"{where} <vnet:policy> takes exactly one attribute, name")
        if not _POLICY_NAME.match(name):
            raise HookInputError(f"{where} {_show(name)} is not a policy name")
        if name in policies:
            raise HookInputError(f"{where} policy {name!r} is listed twice")
        policies.append(name)
    return _Port(
        index=index,
        network=network,
        mac=_check_mac(mac_text, f"{where} mac") if mac_text is not None else None,
        dev=_check_ifname(dev_text, f"{where} dev") if dev_text is not None else None,
        guest=guest,
        policies=tuple(policies),
    )


def _bind_ports(domain: str, interfaces: list[Interface], ports: list[_Port]) -> tuple[Interface, ...]:
    """Attach each port to the one interface it names; fill in default guest names."""
    claimed: dict[int, _Port] = {}
    for port in ports:
        hits = [
            i for i in interfaces
            if (port.mac is None or i.mac == port.mac) and (port.dev is None or i.target_dev == port.dev)
        ]
        if not hits:
            raise HookInputError(f"domain XML: {port.describe()} matches no interface")
        if len(hits) > 1:
            raise HookInputError(
                f"domain XML: {port.describe()} matches interfaces {', '.join(str(i.index) for i in hits)}"
            )
        iface = hits[0]
        if iface.index in claimed:
            first = claimed[iface.index].index
            raise HookInputError(f"domain XML: vnet ports {first} and {port.index} both match interface {iface.index}")
        claimed[iface.index] = port
    seen: dict[tuple[str, str], int] = {}
    out: list[Interface] = []
    for iface in interfaces:
        bound = claimed.get(iface.index)
        if bound is None:
            out.append(iface)
            continue
        guest = bound.guest or (domain if len(ports) == 1 else f"{domain}-{iface.index}")
        if not _GUEST_NAME.match(guest):
            raise HookInputError(
                f"domain XML: vnet port {bound.index}: the default guest name {_show(guest)} is not a vnet guest"
                " name (letters, digits, '-', '_', '.', max 63); set guest= on the port"
            )
        if (other := seen.get((bound.network, guest))) is not None:
            raise HookInputError(
                f"domain XML: vnet ports {other} and {bound.index} are both {guest!r} on network {bound.network!r}"
            )
        seen[(bound.network, guest)] = bound.index
        out.append(replace(iface, vnet_network=bound.network, vnet_guest=guest, vnet_policies=bound.policies))
    return tuple(out)
