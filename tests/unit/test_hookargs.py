"""The pure input side of the guest hooks: QEMU/libvirt argv and libvirt domain XML, good and hostile."""

from __future__ import annotations

import pytest

from vnet.errors import HookError, VnetError
from vnet.hookargs import (
    MAX_GUEST_NAME,
    MAX_XML,
    VNET_XMLNS,
    Domain,
    HookInputError,
    Interface,
    LibvirtCall,
    check_domain_name,
    parse_domain,
    parse_libvirt_argv,
    parse_qemu_argv,
)

# What `virsh dumpxml web1` prints for a running q35 TCG guest, trimmed of disks' details.
DOMAIN_XML = """\
<domain type='qemu' id='7'>
  <name>web1</name>
  <uuid>5C1A3F2E-8B4D-4E6A-9F0B-1D2C3E4F5A6B</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
    <vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
      <vnet:port mac="52:54:00:AA:BB:01" network="lab">
        <vnet:policy name="clean-traffic"/>
        <vnet:policy name="web"/>
      </vnet:port>
      <vnet:port dev="vnet3" network="dmz" guest="web1-dmz"/>
    </vnet:ports>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='1'/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='pci' index='0' model='pcie-root'>
      <alias name='pcie.0'/>
    </controller>
    <interface type='ethernet'>
      <mac address='52:54:00:aa:bb:01'/>
      <target dev='vm1tap' managed='no'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='vn-lab'/>
      <target dev='vnet3'/>
      <model type='e1000e'/>
      <alias name='net1'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:03'/>
      <source network='default' portid='0a9a2f1e-5b0c-4a42-9d4e-2f7b1d6c9e10' bridge='virbr0'/>
      <target dev='vnet4'/>
      <model type='virtio'/>
      <alias name='net2'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'/>
    </serial>
    <console type='pty' tty='/dev/pts/3'>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='virtio'/>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+108</label>
    <imagelabel>+64055:+108</imagelabel>
  </seclabel>
</domain>
"""


def domain(devices: str = "", metadata: str = "", name: str = "web1") -> str:
    """A minimal domain with the given interfaces and vnet ports."""
    ports = f'<vnet:ports xmlns:vnet="{VNET_XMLNS}">{metadata}</vnet:ports>' if metadata else ""
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>5c1a3f2e-8b4d-4e6a-9f0b-1d2c3e4f5a6b</uuid>"
        f"<metadata>{ports}</metadata><devices>{devices}</devices></domain>"
    )


ETH = "<interface type='ethernet'><mac address='52:54:00:aa:bb:01'/><target dev='vm1tap' managed='no'/></interface>"
ETH2 = "<interface type='ethernet'><mac address='52:54:00:aa:bb:02'/><target dev='vm2tap' managed='no'/></interface>"


def refused(excinfo: pytest.ExceptionInfo[HookInputError], *parts: str) -> None:
    """The message is one line of sane length and names the problem."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert len(message) < 240, message
    for part in parts:
        assert part in message, message


# --- QEMU script= / downscript= -------------------------------------------------------------


@pytest.mark.parametrize("ifname", ["vm1tap", "vnet0", "a", "x" * 15, "tap-web1.0", "ü" * 7])
def test_qemu_argv_accepts_kernel_ifnames(ifname: str) -> None:
    assert parse_qemu_argv([ifname]) == ifname


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        ([], "got 0"),
        (["vm1tap", "extra"], "got 2"),
        ([""], "interface name is empty"),
        (["averyveryverylongname0"], "'averyveryverylongname0' is 22 bytes, the kernel allows 15"),
        (["ü" * 8], "is 16 bytes, the kernel allows 15"),
        (["a/b"], "'a/b' contains '/'"),
        (["a:b"], "'a:b' contains ':'"),
        (["a b"], "contains ' '"),
        (["a\nb"], "contains '\\n'"),
        (["a\rb"], "contains '\\r'"),
        (["a\0b"], "contains '\\x00'"),
        ([".."], "'..' is reserved"),
        (["tap\udcff"], "is not valid UTF-8 (byte 0xff)"),
        (["x" * 5000], "is 5000 bytes"),
    ],
)
def test_qemu_argv_refuses(argv: list[str], expect: str) -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_qemu_argv(argv)
    refused(excinfo, expect)


def test_hook_input_error_is_in_the_error_tree() -> None:
    assert issubclass(HookInputError, HookError)
    assert issubclass(HookInputError, VnetError)


# --- libvirt qemu hook argv -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        (["web1", "prepare", "begin", "-"], "prepare"),
        (["web1", "start", "begin", "-"], "noop"),
        (["web1", "started", "begin", "-"], "noop"),
        (["web1", "stopped", "end", "-"], "noop"),
        (["web1", "release", "end", "-"], "release"),
        (["web1", "release", "end", "destroyed"], "release"),
        (["web1", "release", "end", "from snapshot"], "release"),
        (["web1", "reconnect", "begin", "-"], "reconnect"),
        (["web1", "attach", "begin", "-"], "reconnect"),
        (["web1", "migrate", "begin", "-"], "migrate"),
        (["web1", "restore", "begin", "-"], "noop"),
        (["web1", "teleport", "begin", "-"], "noop"),
        (["web1", "prepare", "end", "-"], "noop"),
        (["my web server", "prepare", "begin", "-"], "prepare"),
        (["café-01.lab", "prepare", "begin", "-"], "prepare"),
        (["x" * MAX_GUEST_NAME, "prepare", "begin", "-"], "prepare"),
    ],
)
def test_libvirt_argv_actions(argv: list[str], action: str) -> None:
    call = parse_libvirt_argv(argv)
    assert call == LibvirtCall(*argv)
    assert call.action == action


def test_libvirt_release_reason() -> None:
    assert parse_libvirt_argv(["web1", "release", "end", "shutdown"]).reason == "shutdown"
    assert parse_libvirt_argv(["web1", "release", "end", "-"]).reason is None


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["web1", "prepare", "begin"], "want exactly four arguments (GUEST OP SUBOP EXTRA), got 3"),
        (["web1", "prepare", "begin", "-", "-"], "got 5"),
        ([], "got 0"),
        (["", "prepare", "begin", "-"], "guest name is empty"),
        (["x" * 300, "prepare", "begin", "-"], "is 300 bytes, vnet allows 200"),
        (["x" * (MAX_GUEST_NAME + 1), "prepare", "begin", "-"], "is 201 bytes"),
        (["é" * 101, "prepare", "begin", "-"], "is 202 bytes"),
        ([";rm -rf /", "prepare", "begin", "-"], "guest name ';rm -rf /' contains ';'"),
        (["web1;rm -rf /", "prepare", "begin", "-"], "contains ';'"),
        (["$(reboot)", "prepare", "begin", "-"], "contains '$'"),
        (["`id`", "prepare", "begin", "-"], "contains '`'"),
        (["a|b", "prepare", "begin", "-"], "contains '|'"),
        (["a&b", "prepare", "begin", "-"], "contains '&'"),
        (["a>b", "prepare", "begin", "-"], "contains '>'"),
        (["web*", "prepare", "begin", "-"], "contains '*'"),
        (["it's", "prepare", "begin", "-"], "contains \"'\""),
        (['say "hi"', "prepare", "begin", "-"], "contains '\"'"),
        (["a\\b", "prepare", "begin", "-"], "contains '\\\\'"),
        (["a/b", "prepare", "begin", "-"], "contains '/'"),
        (["bang!", "prepare", "begin", "-"], "contains '!'"),
        (["{a,b}", "prepare", "begin", "-"], "contains '{'"),
        (["web1\nrelease", "prepare", "begin", "-"], "contains the non-printable character '\\n'"),
        (["web1\t", "prepare", "begin", "-"], "non-printable character '\\t'"),
        (["web\x1b[2J", "prepare", "begin", "-"], "non-printable character '\\x1b'"),
        (["web\u202e1", "prepare", "begin", "-"], "non-printable character '\\u202e'"),
        (["web\udcff", "prepare", "begin", "-"], "guest name 'web\\udcff' is not valid UTF-8 (byte 0xff)"),
        (["-web1", "prepare", "begin", "-"], "starts with '-'"),
        ([" web1", "prepare", "begin", "-"], "starts or ends with a space"),
        (["web1", "", "begin", "-"], "operation is empty"),
        (["web1", "prepare\n", "begin", "-"], "operation 'prepare\\n' contains a non-printable character"),
        (["web1", "prepare", "begin\udc80", "-"], "sub-operation 'begin\\udc80' is not valid UTF-8 (byte 0x80)"),
        (["web1", "release", "end", "r" * 65], "extra argument 'rrrr"),
    ],
)
def test_libvirt_argv_refuses(argv: list[str], expect: str) -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_libvirt_argv(argv)
    refused(excinfo, expect)


def test_long_names_are_truncated_in_messages() -> None:
    with pytest.raises(HookInputError) as excinfo:
        check_domain_name("y" * 300 + ";")
    refused(excinfo, "'" + "y" * 40 + "'...", "is 301 bytes")


# --- domain XML: what libvirt sends -----------------------------------------------------------


def test_parses_a_realistic_domain() -> None:
    dom = parse_domain(DOMAIN_XML.encode())
    assert dom == Domain(
        name="web1",
        uuid="5c1a3f2e-8b4d-4e6a-9f0b-1d2c3e4f5a6b",
        interfaces=(
            Interface(
                index=1, type="ethernet", mac="52:54:00:aa:bb:01", target_dev="vm1tap", managed=False,
                source_bridge=None, model="virtio",
                vnet_network="lab", vnet_guest="web1-1", vnet_policies=("clean-traffic", "web"),
            ),
            Interface(
                index=2, type="bridge", mac="52:54:00:aa:bb:02", target_dev="vnet3", managed=True,
                source_bridge="vn-lab", model="e1000e",
                vnet_network="dmz", vnet_guest="web1-dmz", vnet_policies=(),
            ),
            Interface(
                index=3, type="network", mac="52:54:00:aa:bb:03", target_dev="vnet4", managed=True,
                source_bridge=None, model="virtio",
            ),
        ),
    )
    assert [i.index for i in dom.vnet_interfaces] == [1, 2]


def test_str_and_bytes_parse_alike() -> None:
    assert parse_domain(DOMAIN_XML) == parse_domain(DOMAIN_XML.encode())


def test_declared_encoding_is_honoured() -> None:
    xml = "<?xml version='1.0' encoding='ISO-8859-1'?>" + domain(name="café")
    assert parse_domain(xml.encode("latin-1")).name == "café"


def test_one_vnet_port_is_named_after_the_domain() -> None:
    dom = parse_domain(domain(ETH + ETH2, '<vnet:port mac="52-54-00-AA-BB-02" network="lab"/>'))
    assert [(i.vnet_network, i.vnet_guest) for i in dom.interfaces] == [(None, None), ("lab", "web1")]


def test_several_vnet_ports_get_the_interface_position() -> None:
    ports = '<vnet:port mac="52:54:00:aa:bb:01" network="lab"/><vnet:port dev="vm2tap" network="lab"/>'
    dom = parse_domain(domain(ETH + ETH2, ports))
    assert [i.vnet_guest for i in dom.interfaces] == ["web1-1", "web1-2"]


def test_port_with_mac_and_dev_needs_both_to_match() -> None:
    port = '<vnet:port mac="52:54:00:aa:bb:01" dev="vm1tap" network="lab"/>'
    assert parse_domain(domain(ETH + ETH2, port)).interfaces[0].vnet_network == "lab"
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(ETH + ETH2, '<vnet:port mac="52:54:00:aa:bb:01" dev="vm2tap" network="lab"/>'))
    refused(excinfo, "vnet port 1 (mac 52:54:00:aa:bb:01, dev vm2tap) matches no interface")


def test_no_metadata_no_interfaces() -> None:
    xml = "<domain><name>web1</name><uuid>5c1a3f2e-8b4d-4e6a-9f0b-1d2c3e4f5a6b</uuid></domain>"
    assert parse_domain(xml) == Domain("web1", "5c1a3f2e-8b4d-4e6a-9f0b-1d2c3e4f5a6b", ())


def test_interface_without_mac_or_target() -> None:
    dom = parse_domain(domain("<interface type='user'><model type='virtio'/></interface>"))
    assert dom.interfaces == (Interface(1, "user", None, None, True, None, "virtio"),)


# --- domain XML: hostile and broken input -------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<domain><name>&lol9;</name></domain>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<domain><name>&x;</name></domain>
"""
EXTERNAL_DTD = '<?xml version="1.0"?>\n<!DOCTYPE domain SYSTEM "http://evil.example/domain.dtd">\n<domain/>'


@pytest.mark.parametrize(
    ("xml", "expect"),
    [
        (BILLION_LAUGHS, "domain XML: a document type declaration (<!DOCTYPE>) is refused"),
        (EXTERNAL_ENTITY, "a document type declaration (<!DOCTYPE>) is refused"),
        (EXTERNAL_DTD, "is refused; it points at 'http://evil.example/domain.dtd'"),
        ("<domain><name>&x;</name></domain>", "not well-formed: line 1, column 15: undefined entity"),
        (DOMAIN_XML[: DOMAIN_XML.index("  <memory")], "not well-formed: line 16, column 1: no element found"),
        (DOMAIN_XML[: DOMAIN_XML.index("/>")], "not well-formed: line 6, column 7: unclosed token"),
        ("<domain><name>web1</name>\n  <uuid>", "not well-formed: line 2, column 9: no element found"),
        ("", "domain XML is empty"),
        (b"", "domain XML is empty"),
        (b"\n  \n", "domain XML is empty"),
        (b"\xff\xfe\x00garbage", "domain XML is not well-formed: line 1, column 2: syntax error"),
        (b"<domain><name>web\xff</name></domain>", "line 1, column 18: not well-formed (invalid token)"),
        ("<domain><name>web\udcff</name></domain>", "domain XML is not valid UTF-8 (character 17)"),
        (b"<" + b"a" * MAX_XML, f"domain XML is {MAX_XML + 1} bytes, more than the {MAX_XML} vnet reads"),
        ("<network><name>lab</name></network>", "the root element is 'network', want 'domain'"),
        ("<domain><uuid>5c1a3f2e-8b4d-4e6a-9f0b-1d2c3e4f5a6b</uuid></domain>", "domain XML: <name> is empty"),
        (domain(name="web1;rm -rf /"), "domain XML: <name> 'web1;rm -rf /' contains ';'"),
        (domain(name="$(reboot)"), "domain XML: <name> '$(reboot)' contains '$'"),
        (domain(name="a&#10;b"), "<name> 'a\\nb' contains the non-printable character '\\n'"),
        (domain(name="x" * 300), "<name> '" + "x" * 40 + "'... is 300 bytes, vnet allows 200"),
        ("<domain><name>web1</name></domain>", "domain XML: <uuid> '' is not a UUID"),
        ("<domain><name>web1</name><uuid>5c1a-evil</uuid></domain>", "<uuid> '5c1a-evil' is not a UUID"),
    ],
)
def test_domain_xml_refused(xml: str | bytes, expect: str) -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(xml)
    refused(excinfo, expect)


@pytest.mark.parametrize(
    ("devices", "expect"),
    [
        (
            "<interface type='ethernet'><target dev='averyveryverylongname0'/></interface>",
            "domain XML: interface 1: target dev 'averyveryverylongname0' is 22 bytes, the kernel allows 15",
        ),
        (
            ETH + "<interface type='bridge'><target dev='vnet/../x'/></interface>",
            "domain XML: interface 2: target dev 'vnet/../x' contains '/', the kernel refuses it",
        ),
        ("<interface type='ethernet'><target dev=''/></interface>", "interface 1: target dev is empty"),
        ("<interface type='ethernet'><target dev='a&#13;b'/></interface>", "target dev 'a\\rb' contains '\\r'"),
        (
            "<interface type='ethernet'><mac address='52:54:00:aa:bb'/></interface>",
            "domain XML: interface 1: mac '52:54:00:aa:bb' is not a MAC address",
        ),
        ("<interface type='ethernet'><mac address='52:54:00:aa:bb: 1'/></interface>", "is not a MAC address"),
        ("<interface type='ethernet'><mac address='52:54:00:aa:bb:zz'/></interface>", "is not a MAC address"),
        ("<interface type='ethernet'><mac/></interface>", "interface 1: mac '' is not a MAC address"),
        (f"<interface type='ethernet'><mac address='{'5' * 1000}'/></interface>", "'" + "5" * 40 + "'..."),
        (
            "<interface type='ethernet'><target dev='vm1tap' managed='maybe'/></interface>",
            "interface 1: target managed='maybe', want 'yes' or 'no'",
        ),
        ("<interface><mac address='52:54:00:aa:bb:01'/></interface>", "interface 1: no type attribute"),
        (
            "<interface type='bridge'><source bridge='bridge-name-too-long'/></interface>",
            "interface 1: source bridge 'bridge-name-too-long' is 20 bytes",
        ),
    ],
)
def test_bad_interfaces_refused(devices: str, expect: str) -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(devices))
    refused(excinfo, expect)


@pytest.mark.parametrize(
    ("ports", "expect"),
    [
        (
            '<vnet:port mac="52:54:00:aa:bb:09" network="lab"/>',
            "vnet port 1 (mac 52:54:00:aa:bb:09) matches no interface",
        ),
        ('<vnet:port network="lab"/>', "vnet port 1: needs a mac or a dev attribute"),
        ('<vnet:port mac="52:54:00:aa:bb:01"/>', "vnet port 1: no network attribute"),
        ('<vnet:port mac="52:54:00:aa:bb:01" network="Lab!"/>', "network 'Lab!' is not a vnet network name"),
        ('<vnet:port mac="52:54:00:aa:bb:01" network="lab" netwrok="x"/>', "unknown attribute 'netwrok'"),
        ('<vnet:port mac="52:54:00:aa:bb:01" network="lab" guest="a;b"/>', "guest 'a;b': use letters, digits"),
        ('<vnet:port mac="52:54:00:aa:bb:1" network="lab"/>', "vnet port 1: mac '52:54:00:aa:bb:1' is not a MAC"),
        ('<vnet:port dev="vm1tap/x" network="lab"/>', "vnet port 1: dev 'vm1tap/x' contains '/'"),
        (
            '<vnet:port mac="52:54:00:aa:bb:01" network="lab"/><vnet:port dev="vm1tap" network="dmz"/>',
            "vnet ports 1 and 2 both match interface 1",
        ),
        (
            '<vnet:port mac="52:54:00:aa:bb:01" network="lab" guest="g"/>'
            '<vnet:port mac="52:54:00:aa:bb:02" network="lab" guest="g"/>',
            "vnet ports 1 and 2 are both 'g' on network 'lab'",
        ),
        ('<vnet:port mac="52:54:00:aa:bb:01" network="lab"><vnet:policy/></vnet:port>', "takes exactly one attribute"),
        (
            '<vnet:port mac="52:54:00:aa:bb:01" network="lab"><vnet:policy name="a b"/></vnet:port>',
            "vnet port 1: 'a b' is not a policy name",
        ),
        (
            '<vnet:port mac="52:54:00:aa:bb:01" network="lab"><vnet:policy name="web"/>'
            '<vnet:policy name="web"/></vnet:port>',
            "policy 'web' is listed twice",
        ),
        (
            '<vnet:port mac="52:54:00:aa:bb:01" network="lab"><vnet:rule/></vnet:port>',
            "may hold only <vnet:policy>, found <vnet:rule>",
        ),
        ('<vnet:network name="lab"/>', "<vnet:ports> may hold only <vnet:port>, found <vnet:network>"),
    ],
)
def test_bad_vnet_ports_refused(ports: str, expect: str) -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(ETH + ETH2, ports))
    refused(excinfo, "domain XML: ", expect)


def test_ambiguous_mac_refused() -> None:
    twins = ETH + ETH.replace("vm1tap", "vm3tap")
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(twins, '<vnet:port mac="52:54:00:aa:bb:01" network="lab"/>'))
    refused(excinfo, "vnet port 1 (mac 52:54:00:aa:bb:01) matches interfaces 1, 2")


def test_default_guest_name_must_be_a_vnet_guest_name() -> None:
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(ETH, '<vnet:port mac="52:54:00:aa:bb:01" network="lab"/>', name="my web"))
    refused(excinfo, "the default guest name 'my web' is not a vnet guest name", "set guest= on the port")


def test_vnet_elements_outside_ports_refused() -> None:
    xml = domain(ETH).replace(
        "<metadata>", f'<metadata><vnet:port xmlns:vnet="{VNET_XMLNS}" mac="52:54:00:aa:bb:01" network="lab"/>'
    )
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(xml)
    refused(excinfo, "domain XML: metadata: <vnet:port> must be inside <vnet:ports>")


def test_two_ports_elements_refused() -> None:
    block = f'<vnet:ports xmlns:vnet="{VNET_XMLNS}"/>'
    with pytest.raises(HookInputError) as excinfo:
        parse_domain(domain(ETH).replace("<metadata>", "<metadata>" + block + block))
    refused(excinfo, "more than one <vnet:ports> element")
