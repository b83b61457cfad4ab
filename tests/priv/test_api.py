"""The daemon's HTTP API against docs/openapi.yaml, on a real daemon in its own namespace.

The document and ``vnet.routes.Api.router`` list the same (method, path) pairs; every answer
below is checked against the operation's documented statuses and JSON schemas (OpenAPI 3.0
schema objects turned into JSON Schema: ``nullable`` becomes a ``"null"`` type). Request bodies
are held to the documented request schema too: a body the daemon accepts must be valid, one it
refuses for its shape (unknown field, missing field, wrong type) must not be.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml

from tests.conftest import NS_PREFIX, REPO, NetnsFactory, delete_netns, sh
from tests.priv.dhcp_env import DhcpLab
from vnet.controller import Controller
from vnet.httpclient import quote, request
from vnet.routes import Api

pytestmark = pytest.mark.priv

DOC = REPO / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DECL_MAC = "52:54:00:00:0a:01"
MAC1 = "52:54:00:00:0a:11"
MAC2 = "52:54:00:00:0a:12"
MAC3 = "52:54:00:00:0a:13"
CONFIG = f"""\
name: lab
mode: isolated
bridge: {{name: vn-lab}}
ipv4:
  address: 10.77.0.1/24
  dhcp:
    ranges: [10.77.0.100-10.77.0.199]
guests:
  - {{name: decl, mac: "{DECL_MAC}"}}
"""
NO_BODY = object()


# ----- the document -----------------------------------------------------------------------------


def to_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema (the common subset plus ``nullable``)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


class Spec:
    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text())
        schemas = self.doc["components"]["schemas"]
        self.components = {"schemas": {name: to_json_schema(s) for name, s in schemas.items()}}

    def operations(self) -> set[tuple[str, str]]:
        return {(m.upper(), p) for p, item in self.doc["paths"].items() for m in item if m in METHODS}

    def methods(self, template: str) -> set[str]:
        return {m.upper() for m in self.doc["paths"][template] if m in METHODS}

    def template(self, path: str) -> str:
        segments = path.split("?")[0].split("/")
        for template in self.doc["paths"]:
            parts = template.split("/")
            if len(parts) == len(segments) and all(
                    p == s or (p.startswith("{") and s) for p, s in zip(parts, segments, strict=True)):
                return template
        raise AssertionError(f"{path} matches no path of {DOC.name}")

    def operation(self, method: str, path: str) -> dict[str, Any]:
        template = self.template(path)
        op = self.doc["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} is not documented"
        return cast(dict[str, Any], op)

    def ref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            where = node["$ref"].removeprefix("#/").split("/")
            found: Any = self.doc
            for key in where:
                found = found[key]
            node = found
        return node

    def response(self, method: str, path: str, status: int) -> dict[str, Any]:
        responses = self.operation(method, path)["responses"]
        assert str(status) in responses, (
            f"{method} {path} answered {status}, documented: {', '.join(sorted(responses))}")
        return self.ref(responses[str(status)])

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        resolved = {**to_json_schema(schema), "components": self.components}
        jsonschema.Draft202012Validator(
            resolved, format_checker=jsonschema.FormatChecker()).validate(instance)

    def is_valid(self, schema: dict[str, Any], instance: Any) -> bool:
        try:
            self.validate(schema, instance)
        except jsonschema.ValidationError:
            return False
        return True

    def component_schema(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.doc["components"]["schemas"][name])


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(DOC)


# ----- talking to the daemon --------------------------------------------------------------------


def http_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: vnet\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def raw_exchange(sock_path: Path, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; (status, lower-cased headers, body) of the answer (read to EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(data)
        buf = b""
        while chunk := sock.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


class Client:
    """Calls the daemon and holds each answer to the document; remembers what it saw."""

    def __init__(self, spec: Spec, sock: Path) -> None:
        self.spec = spec
        self.sock = sock
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, path: str, body: Any = NO_BODY, *, expect: int,
                 raw: bytes | None = None, body_valid: bool | None = None) -> Any:
        op = self.spec.operation(method, path)
        if raw is not None:
            status, headers, data = raw_exchange(self.sock, http_bytes(method, path, raw))
            assert headers["content-type"] == "application/json"
            reply: Any = json.loads(data)
        else:
            status, reply = request(self.sock, method, path, None if body is NO_BODY else body)
        assert status == expect, f"{method} {path} -> {status} {reply!r}, expected {expect}"
        documented = self.spec.response(method, path, status)
        media = next(iter(documented["content"]))
        self.spec.validate(documented["content"][media]["schema"], reply)
        if body is not NO_BODY and "requestBody" in op:
            # 400 may be about a value the schema cannot express (a MAC's digits): say which
            assert status != 400 or body_valid is not None, f"{method} {path}: say whether {body!r} is valid"
            want = True if body_valid is None else body_valid
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert self.spec.is_valid(schema, body) == want, (
                f"{method} {path}: documented request schema {'refuses' if want else 'accepts'} {body!r}")
        self.seen.add((method, self.spec.template(path), status))
        return reply


def links_changed(outcome: dict[str, Any]) -> list[str]:
    """An outcome's link changes: the nftables lines that may follow them (set elements) are
    the filter's business, tested in test_filter*.py."""
    return [c for c in outcome["changes"] if "nftables" not in c]


def link(host: str, ifname: str) -> dict[str, Any] | None:
    proc = sh("ip", "-n", host, "-j", "-d", "link", "show", ifname, check=False)
    return cast(dict[str, Any], json.loads(proc.stdout)[0]) if proc.returncode == 0 else None


@pytest.fixture
def lab(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[DhcpLab]:
    env = DhcpLab(netns_factory, tmp_path, CONFIG, manual_l2=False)
    try:
        env.start_daemon()
        yield env
    finally:
        env.close()


@pytest.fixture
def client(lab: DhcpLab, spec: Spec) -> Client:
    return Client(spec, lab.run_dir / "vnet.sock")


def concrete(template: str) -> str:
    return template.replace("{network}", "lab").replace("{guest}", "decl")


# ----- (a) the document and the router ----------------------------------------------------------


def test_document_and_router_list_the_same_routes(lab: DhcpLab, spec: Spec) -> None:
    assert spec.doc["openapi"].startswith("3.0.")
    assert [s["url"] for s in spec.doc["servers"]] == ["http://vnet"]
    assert "--unix-socket" in spec.doc["info"]["description"]
    routes = Api(cast(Controller, None), lab.state_dir, 0.0).router().routes()
    assert len(routes) == len(set(routes))
    assert set(routes) == spec.operations()
    ids = [op["operationId"] for p in spec.doc["paths"].values() for m, op in p.items() if m in METHODS]
    assert len(ids) == len(set(ids)) == len(routes)
    # The running daemon has each one: none is the router's own "not found" or 405.
    sock = lab.run_dir / "vnet.sock"
    for method, template in sorted(spec.operations()):
        body = b"{}" if method == "POST" else b""
        status, _, data = raw_exchange(sock, http_bytes(method, concrete(template), body))
        assert status != 405, (method, template, data)
        assert not (status == 404 and json.loads(data)["error"] == "not found"), (method, template, data)
        for code in spec.operation(method, concrete(template))["responses"]:
            assert code == "default" or 200 <= int(code) <= 599


def test_wrong_method_is_405_with_allow_and_unknown_path_404(lab: DhcpLab, spec: Spec) -> None:
    sock = lab.run_dir / "vnet.sock"
    not_allowed = spec.ref({"$ref": "#/components/responses/MethodNotAllowed"})
    for template in spec.doc["paths"]:
        allowed = spec.methods(template)
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - allowed):
            status, headers, data = raw_exchange(sock, http_bytes(method, concrete(template)))
            assert status == 405, (method, template, data)
            assert headers["allow"] == ", ".join(sorted(allowed))
            spec.validate(not_allowed["content"]["application/json"]["schema"], json.loads(data))
    status, _, data = raw_exchange(sock, http_bytes("GET", "/v1/frobnicate"))
    assert status == 404
    body = json.loads(data)
    spec.validate(spec.ref({"$ref": "#/components/responses/NotFound"})["content"]["application/json"]["schema"],
                  body)
    assert "/v1/frobnicate" in body["detail"]


# ----- (b) each operation answers as documented ---------------------------------------------------


def test_reads_answer_as_documented(lab: DhcpLab, client: Client, netns_factory: NetnsFactory) -> None:
    assert lab.daemon is not None
    status = client("GET", "/v1/status", expect=200)
    assert status["pid"] == lab.daemon.pid
    assert status["guests"] == 1
    assert set(status["networks"]["lab"]) >= {"dhcp", "dns"}
    nets = client("GET", "/v1/networks", expect=200)
    assert [n["name"] for n in nets] == ["lab"]
    net = client("GET", "/v1/networks/lab", expect=200)
    assert (net["bridge"], net["ipv4"], net["mode"], net["guests"]) == ("vn-lab", "10.77.0.1/24", "isolated", 1)
    assert net["source"] == str(lab.config_dir / "lab.yaml")
    err = client("GET", "/v1/networks/nope", expect=404)
    assert "'nope'" in err["error"]
    assert "defined: lab" in err["error"]
    err = client("GET", "/v1/networks/nope/guests", expect=404)
    assert "defined: lab" in err["error"]
    # a guest with a real lease: a veth port into a guest namespace, udhcpc there
    guest_ns = netns_factory("g")
    client("POST", "/v1/networks/lab/guests", {"guest": "leaser", "mac": MAC1, "port": "veth",
                                               "netns": guest_ns}, expect=201)
    lab.udhcpc(guest_ns)
    ip = lab.event("udhcpc", "bound")["ip"]
    rows = client("GET", "/v1/networks/lab/guests", expect=200)
    assert [(g["guest"], g["origin"]) for g in rows] == [("decl", "file"), ("leaser", "api")]
    got = client("GET", "/v1/networks/lab/guests/leaser", expect=200)
    assert (got["leased"], got["ip"], got["port"], got["netns"]) == (True, ip, "veth", guest_ns)
    assert client("GET", "/v1/networks/lab/guests/decl", expect=200)["leased"] is False
    err = client("GET", "/v1/networks/lab/guests/nope", expect=404)
    assert "'nope'" in err["error"]
    leases = client("GET", "/v1/leases", expect=200)
    assert [(r["network"], r["mac"], r["ip"], r["state"]) for r in leases] == [("lab", MAC1, ip, "bound")]
    assert client("GET", "/v1/leases?network=lab", expect=200) == leases
    assert "defined: lab" in client("GET", "/v1/leases?network=other", expect=404)["error"]
    # /metrics: Prometheus text, every sample of a declared family, values that say what is so
    status_code, headers, data = raw_exchange(lab.run_dir / "vnet.sock", http_bytes("GET", "/metrics"))
    assert status_code == 200
    assert headers["content-type"] == next(iter(client.spec.response("GET", "/metrics", 200)["content"]))
    client("GET", "/metrics", expect=200)
    samples = parse_prometheus(data.decode())
    assert samples[("vnet_ports", (("network", "lab"),))] == 2
    assert samples[("vnet_leases_active", (("network", "lab"),))] == 1
    assert samples[("vnet_dhcp_pool_used", (("network", "lab"),))] == 1
    assert samples[("vnet_dhcp_pool_free", (("network", "lab"),))] == 99
    assert samples[("vnet_requests_total", (("network", "lab"), ("service", "dhcp")))] >= 2
    assert samples[("vnet_reconcile_seconds_bucket", (("le", "+Inf"),))] == samples[
        ("vnet_reconcile_seconds_count", ())] >= 1


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(?:,|$)')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a text exposition (0.0.4), checking its grammar and that each sample's family
    has a TYPE line before it."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert help_text, line
            assert name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"second TYPE for {name}"
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            name, labels_text, value = m.groups()
            labels = tuple(LABEL.findall(labels_text or ""))
            if labels_text:
                assert ",".join(f'{k}="{v}"' for k, v in labels) == labels_text, line
            family = name
            if name not in types:
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                assert types.get(family) == "histogram", f"{name}: no TYPE line for its family"
            key = (name, labels)
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(value)
            if types[family] == "counter":
                assert samples[key] >= 0
    assert helped == set(types)
    return samples


def test_guest_lifecycle_answers_as_documented(lab: DhcpLab, client: Client) -> None:
    path = "/v1/networks/lab/guests"
    added = client("POST", path, {"guest": "g1", "mac": MAC1.upper()}, expect=201)
    assert (added["ifname"], added["mac"], added["origin"], added["port"]) == ("lab-g1", MAC1, "api", "tap")
    assert links_changed(added) == ["create tap lab-g1 (network lab, guest g1): master vn-lab"]
    first = link(lab.host, "lab-g1")
    assert first is not None
    assert first["master"] == "vn-lab"
    again = client("POST", path, {"guest": "g1", "mac": MAC1}, expect=200)
    assert again == added | {"changes": []}
    second = link(lab.host, "lab-g1")
    assert second is not None
    assert second["ifindex"] == first["ifindex"]
    # a declared guest with its own MAC: nothing to attach, nothing to do
    decl = client("POST", path, {"guest": "decl", "mac": DECL_MAC}, expect=200)
    assert (decl["origin"], decl["changes"]) == ("file", [])
    got = client("GET", f"{path}/g1", expect=200)
    assert got == {k: v for k, v in added.items() if k != "changes"} | {"leased": False}
    check = client("GET", f"{path}/g1/check", expect=200)
    assert (check["in_sync"], check["drift"], check["ifname"]) == (True, [], "lab-g1")
    assert client("GET", f"{path}/nope/check", expect=404)["error"] == "network 'lab' has no guest 'nope'"
    # gc: an attached guest not listed as live goes, a listed one and the declared one stay
    client("POST", path, {"guest": "g2", "mac": MAC2, "policies": []}, expect=201)
    gone = client("POST", "/v1/gc", {"network": "lab", "live": ["g2"]}, expect=200)
    assert gone["removed"] == ["g1"]
    assert links_changed(gone) == ["delete tap lab-g1 (network lab)"]
    assert link(lab.host, "lab-g1") is None
    assert link(lab.host, "lab-g2") is not None
    assert link(lab.host, "lab-decl") is not None
    assert client("POST", "/v1/gc", {"network": "lab", "live": ["g2"]}, expect=200) == {"removed": [],
                                                                                         "changes": []}
    err = client("POST", "/v1/gc", {"network": "nope", "live": []}, expect=404)
    assert "defined: lab" in err["error"]
    client("POST", "/v1/gc", {"network": "lab"}, expect=400, body_valid=False)
    client("POST", "/v1/gc", {"network": "lab", "live": "g2"}, expect=400, body_valid=False)
    client("POST", "/v1/gc", {"network": "lab", "live": [], "dry": True}, expect=400, body_valid=False)
    removed = client("DELETE", f"{path}/g2", expect=200)
    assert removed["removed"] is True
    assert links_changed(removed) == ["delete tap lab-g2 (network lab)"]
    assert link(lab.host, "lab-g2") is None
    assert client("DELETE", f"{path}/g2", expect=200) == {"removed": False, "changes": []}
    err = client("DELETE", f"{path}/decl", expect=409)
    assert str(lab.config_dir / "lab.yaml") in err["error"]
    assert "defined: lab" in client("DELETE", "/v1/networks/nope/guests/g2", expect=404)["error"]
    assert client("GET", f"{path}/g2", expect=404)["error"] == "network 'lab' has no guest 'g2'"


def test_refused_requests_answer_as_documented(lab: DhcpLab, client: Client) -> None:
    path = "/v1/networks/lab/guests"
    client("POST", path, {"guest": "g1", "mac": MAC1}, expect=201)
    # 409: a MAC in use (by an attachment, by a declared guest), a guest attached differently,
    # a declared guest with another MAC, an undefined policy, a link held by something else
    err = client("POST", path, {"guest": "g2", "mac": MAC1}, expect=409)
    assert err["error"] == f"MAC {MAC1} is already used by guest 'g1' of network 'lab'"
    err = client("POST", path, {"guest": "g2", "mac": DECL_MAC}, expect=409)
    assert err["error"] == f"MAC {DECL_MAC} is already used by guest 'decl' of network 'lab'"
    err = client("POST", path, {"guest": "g1", "mac": MAC2}, expect=409)
    assert err["error"] == (f"guest 'g1' is already attached to network 'lab' with port 'lab-g1' (MAC {MAC1}); "
                            "delete it first to change it")
    err = client("POST", path, {"guest": "decl", "mac": MAC2}, expect=409)
    assert "declared in" in err["error"]
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "policies": ["no-such-policy"]}, expect=409)
    assert "policy 'no-such-policy' is not defined" in err["error"]
    sh("ip", "-n", lab.host, "link", "add", "foreign0", "type", "bridge")
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "ifname": "foreign0"}, expect=409)
    assert "foreign0" in err["error"]
    assert "something else" in err["error"]
    # 404: an unknown network, named with the known ones
    err = client("POST", "/v1/networks/nope/guests", {"guest": "g2", "mac": MAC2}, expect=404)
    assert err["error"] == "no network named 'nope' is defined (defined: lab)"
    # 400: values, fields and bodies
    err = client("POST", path, {"guest": "g2", "mac": "52:54:00:zz:00:01"}, expect=400,
                 body_valid=True)
    assert "52:54:00:zz:00:01" in err["error"]
    assert "MAC" in err["error"]
    err = client("POST", path, {"guest": "-bad", "mac": MAC2}, expect=400, body_valid=False)
    assert "guest name" in err["error"]
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "colour": "red"}, expect=400, body_valid=False)
    assert err == {"error": "unknown field 'colour'",
                   "detail": "known: guest, ifname, mac, netns, origin, policies, port"}
    err = client("POST", path, {"guest": "g2"}, expect=400, body_valid=False)
    assert err["error"] == "missing field 'mac'"
    err = client("POST", path, {"guest": 2, "mac": MAC2}, expect=400, body_valid=False)
    assert err["error"] == "field 'guest' must be a string"
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "port": "veth"}, expect=400, body_valid=True)
    assert "netns" in err["error"]
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "port": "vhost"}, expect=400, body_valid=False)
    assert "vhost" in err["error"]
    err = client("POST", path, {"guest": "g2", "mac": MAC2, "ifname": "x" * 16}, expect=400, body_valid=False)
    assert "16 bytes" in err["error"]
    err = client("POST", path, raw=b"{not json", expect=400)
    assert err["error"] == "request body is not JSON"
    err = client("POST", path, raw=b'["g2"]', expect=400)
    assert err == {"error": "request body is not a JSON object", "detail": "got a JSON list"}
    # 500: the host refuses (a veth into a namespace that does not exist); nothing is kept
    missing_ns = f"{NS_PREFIX}{os.getpid()}nosuch"
    try:
        err = client("POST", path, {"guest": "g3", "mac": MAC3, "port": "veth", "netns": missing_ns}, expect=500)
        assert f"network namespace '{missing_ns}' does not exist" in err["error"]
        assert missing_ns not in sh("ip", "netns", "list").stdout
    finally:
        delete_netns(missing_ns)
    client("GET", f"{path}/g3", expect=404)
    assert link(lab.host, "lab-g3") is None
    assert [g["guest"] for g in client("GET", path, expect=200)] == ["decl", "g1"]


def test_hooks_answer_as_documented(lab: DhcpLab, client: Client) -> None:
    qemu, libvirt = "/v1/hooks/qemu", "/v1/hooks/libvirt"
    up = client("POST", qemu, {"action": "ifup", "ifname": "lab-decl"}, expect=200)
    assert (up["guest"], up["ifname"], up["changes"]) == ("decl", "lab-decl", [])
    assert client("POST", qemu, {"action": "ifdown", "ifname": "lab-decl"}, expect=200) == {
        "ifname": "lab-decl", "changes": []}
    assert "'tap9'" in client("POST", qemu, {"action": "ifup", "ifname": "tap9"}, expect=404)["error"]
    client("POST", qemu, {"action": "suspend", "ifname": "lab-decl"}, expect=400, body_valid=False)
    client("POST", qemu, {"action": "ifup"}, expect=400, body_valid=False)
    client("POST", qemu, {"action": "ifup", "ifname": "lab-decl", "x": 1}, expect=400, body_valid=False)
    noop = client("POST", libvirt, {"argv": ["vm1", "started", "begin", "-"]}, expect=200)
    assert noop == {"action": "noop", "ports": []}
    xml = f"""<domain type="kvm"><name>vm1</name><uuid>6f1a0c1e-5b2d-4e8a-9c3f-0d4e5f607182</uuid>
      <metadata><vnet:ports xmlns:vnet="http://vnet.dev/xmlns/libvirt/1">
        <vnet:port mac="{MAC1}" network="lab" guest="web1"/></vnet:ports></metadata>
      <devices><interface type="ethernet"><mac address="{MAC1}"/><target dev="vm1tap" managed="no"/>
      </interface></devices></domain>"""
    prepared = client("POST", libvirt, {"argv": ["vm1", "prepare", "begin", "-"], "xml": xml}, expect=200)
    assert prepared["action"] == "prepare"
    assert [(p["guest"], p["ifname"], p["origin"]) for p in prepared["ports"]] == [("web1", "vm1tap", "libvirt")]
    tap = link(lab.host, "vm1tap")
    assert tap is not None
    assert tap["master"] == "vn-lab"
    again = client("POST", libvirt, {"argv": ["vm1", "prepare", "begin", "-"], "xml": xml}, expect=200)
    assert again["ports"][0]["changes"] == []
    released = client("POST", libvirt, {"argv": ["vm1", "release", "end", "-"], "xml": xml}, expect=200)
    assert released["action"] == "release"
    assert [(p["removed"], links_changed(p)) for p in released["ports"]] == [
        (True, ["delete tap vm1tap (network lab)"])]
    assert link(lab.host, "vm1tap") is None
    # a type=bridge interface: libvirt will make the TAP, so the attachment waits for it
    bridged = f"""<domain type="kvm"><name>vm2</name><uuid>6f1a0c1e-5b2d-4e8a-9c3f-0d4e5f607183</uuid>
      <devices><interface type="bridge"><mac address="{MAC2}"/><source bridge="vn-lab"/>
      </interface></devices></domain>"""
    pending = client("POST", libvirt, {"argv": ["vm2", "prepare", "begin", "-"], "xml": bridged}, expect=200)
    assert [(p["guest"], p["ifname"], p.get("pending")) for p in pending["ports"]] == [("vm2", None, True)]
    released = client("POST", libvirt, {"argv": ["vm2", "release", "end", "-"], "xml": bridged}, expect=200)
    assert [p["removed"] for p in released["ports"]] == [True]
    err = client("POST", libvirt, {"argv": ["vm1", "prepare", "begin"]}, expect=400, body_valid=False)
    assert "four arguments" in err["error"]
    client("POST", libvirt, {}, expect=400, body_valid=False)
    err = client("POST", libvirt, {"argv": ["vm2", "prepare", "begin", "-"], "xml": xml}, expect=400,
                 body_valid=True)
    assert "'vm1'" in err["error"]
    assert "'vm2'" in err["error"]


def test_reload_answers_its_outcome_and_refuses_a_broken_file(lab: DhcpLab, client: Client) -> None:
    assert client("POST", "/v1/reload", expect=200) == {"changes": []}
    client("POST", "/v1/networks/lab/guests", {"guest": "g1", "mac": MAC1}, expect=201)
    attached = link(lab.host, "lab-g1")
    assert attached is not None
    lab.write_config(CONFIG + f'  - {{name: decl2, mac: "{MAC2}"}}\n')
    outcome = client("POST", "/v1/reload", expect=200)
    assert links_changed(outcome) == ["create tap lab-decl2 (network lab, guest decl2): master vn-lab"]
    kept = link(lab.host, "lab-g1")
    assert kept is not None
    assert kept["ifindex"] == attached["ifindex"]  # desired state = files + attachments
    lab.write_config("name: lab\nmode: warp\nbridge: {name: vn-lab}\n")
    err = client("POST", "/v1/reload", expect=422)
    assert err["error"].startswith(f"{lab.config_dir / 'lab.yaml'}:2: mode:"), err
    assert "warp" in err["error"]
    # the daemon keeps serving the last good model
    assert client("GET", "/v1/status", expect=200)["guests"] == 3
    assert [g["guest"] for g in client("GET", "/v1/networks/lab/guests", expect=200)] == ["decl", "decl2", "g1"]
    assert link(lab.host, "lab-decl2") is not None
    lab.write_config(CONFIG)
    assert links_changed(client("POST", "/v1/reload", expect=200)) == ["delete tap lab-decl2 (network lab)"]


# ----- (c) curl, (d) clients that hold a connection ---------------------------------------------


def test_curl_talks_to_the_socket(lab: DhcpLab, spec: Spec) -> None:
    assert lab.daemon is not None
    sock = str(lab.run_dir / "vnet.sock")
    out = sh("curl", "-sS", "--max-time", "5", "--unix-socket", sock, "http://vnet/v1/status").stdout
    status = json.loads(out)
    spec.validate(spec.component_schema("Status"), status)
    assert status["pid"] == lab.daemon.pid
    out = sh("curl", "-sS", "--max-time", "5", "--unix-socket", sock, "-X", "POST", "-H",
             "Content-Type: application/json", "-d", json.dumps({"guest": "g1", "mac": MAC1}),
             "-w", "\n%{http_code}", f"http://vnet/v1/networks/{quote('lab')}/guests").stdout
    body, _, code = out.rpartition("\n")
    assert code == "201"
    spec.validate(spec.component_schema("PortChange"), json.loads(body))


def test_silent_and_half_sent_clients_do_not_delay_others(lab: DhcpLab) -> None:
    sock_path = lab.run_dir / "vnet.sock"
    held: list[socket.socket] = []
    try:
        for _ in range(12):  # more than the server's 8 workers, of each kind
            for data in (b"", b"GET /v1/status HTTP/1.1\r\nHost: vn",
                         b"POST /v1/gc HTTP/1.1\r\nHost: vnet\r\nContent-Length: 100\r\n\r\n{\"netw"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                held.append(sock)
                sock.connect(str(sock_path))
                sock.sendall(data)
        for _ in range(3):
            began = time.monotonic()
            status, reply = request(sock_path, "GET", "/v1/status", timeout=1.0)
            assert status == 200
            assert reply["pid"] == (lab.daemon.pid if lab.daemon else None)
            assert time.monotonic() - began < 1.0
        for sock in held:  # still open, still unanswered
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()


def test_document_schemas_are_json_schema_compatible(spec: Spec) -> None:
    """No keyword of the document is one the conversion to JSON Schema would lose."""
    openapi_only = {"discriminator", "xml", "externalDocs", "readOnly", "writeOnly", "deprecated"}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert not openapi_only & set(node), node
            for key, value in node.items():
                if key == "properties":  # names of fields, not keywords
                    for field in value.values():
                        walk(field)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.doc["components"]["schemas"])
    for name, schema in spec.components["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(copy.deepcopy(schema) | {"$comment": name})
