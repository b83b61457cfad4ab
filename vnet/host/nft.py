"""The only module that talks to nftables: libnftables through Debian's ``python3-nftables``.

vnet owns exactly two tables, ``bridge vnet`` and ``inet vnet``, and never lists, reads or
changes any other. Everything is JSON (``man libnftables-json``):

- ``check(doc)``: the kernel validates the whole transaction and aborts it (``--check``);
- ``replace(doc)``: check, then apply as ONE transaction (the compiled document begins with
  add table / delete table / add table, so the old tables go and the new ones come atomically;
  a rejected batch leaves the old ruleset untouched). The check before the apply covers
  everything but set/map elements (tables, sets, chains, rules: where a policy can be wrong);
  checking 100,000 elements would double the cost of an apply, and elements that the kernel
  refuses still abort the one transaction;
- ``update_elements(commands)``: one small transaction of set/map element changes (adding a
  guest, a lease moving an address) on a fresh context, so no large cache is carried along;
- ``delete_tables()``: remove vnet's tables, tolerating that they are gone;
- ``list_table(family)``: one of vnet's tables as JSON (with handles), for doctor and tests.

When the kernel rejects a document, the error names the first rule it rejects by the rule's
comment, which the compiler sets to the policy ``FILE:LINE``. libnftables errors never leave
this module raw: they become ``HostError`` with the library's message chained.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import nftables

from vnet.errors import HostError

TABLES = (("bridge", "vnet"), ("inet", "vnet"))

Json = Any


class NftError(HostError):
    """libnftables refused a command; ``detail`` is its error output."""

    def __init__(self, message: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(message + (f": {detail.strip()}" if detail.strip() else ""))


def _context(dry_run: bool = False) -> Any:
    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    ctx.set_dry_run(dry_run)
    return ctx


# Element updates reuse one context (per network namespace, as its netlink socket lives in
# one): freeing a libnftables context after a delete costs 5-15 ms (its cache), which would
# dominate a 0.3 ms element change. This context never lists anything, so its cache stays small.
_element_ctx: tuple[int, Any] | None = None
_element_lock = threading.Lock()


def _netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _run_elements(doc: Json) -> str:
    global _element_ctx
    with _element_lock:
        key = _netns_id()
        if _element_ctx is None or _element_ctx[0] != key:
            _element_ctx = (key, _context())
        ctx = _element_ctx[1]
        try:
            rc, _out, err = ctx.json_cmd(doc)
        except Exception as exc:
            _element_ctx = None
            raise NftError("libnftables failed", repr(exc)) from exc
    return "" if rc == 0 else (err or f"error {rc}")


def _run(doc: Json, *, dry_run: bool = False) -> str:
    """Run one JSON document as one transaction; return the error text ('' on success)."""
    ctx = _context(dry_run)
    try:
        rc, _out, err = ctx.json_cmd(doc)
    except Exception as exc:  # ctypes/JSON failures inside the binding
        raise NftError("libnftables failed", repr(exc)) from exc
    return "" if rc == 0 else (err or f"error {rc}")


def _owned(command: Json) -> bool:
    """True when a command only touches one of vnet's tables."""
    if not isinstance(command, dict) or len(command) != 1:
        return "metainfo" in command if isinstance(command, dict) else False
    (verb, body), = command.items()
    if verb == "metainfo":
        return True
    if not isinstance(body, dict) or len(body) != 1:
        return False
    (_kind, obj), = body.items()
    family = obj.get("family")
    table = obj.get("name") if "table" in body else obj.get("table")
    return (family, table) in TABLES


def _checked_doc(doc: Json) -> Json:
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise NftError("not an nftables JSON document (want {\"nftables\": [...]})")
    foreign = [c for c in items if not _owned(c)]
    if foreign:
        raise NftError("refusing to touch a table vnet does not own", json.dumps(foreign[0])[:200])
    return doc


def _rule_label(command: Json) -> str:
    body = command.get("add", {}).get("rule", {}) if isinstance(command, dict) else {}
    comment = body.get("comment")
    where = f"{body.get('family')} {body.get('table')} chain {body.get('chain')}"
    return f"{comment} ({where})" if comment else where


def _locate(doc: Json) -> str:
    """Find the first rule the kernel rejects: check structure + each rule alone."""
    items = doc["nftables"]
    structure = [c for c in items if "add" not in c or not ({"rule", "element"} & set(c["add"]))]
    rules = [c for c in items if "add" in c and "rule" in c["add"]]
    if _run({"nftables": structure}, dry_run=True):
        return "a table, chain or set definition"
    for rule in rules:
        if _run({"nftables": [*structure, rule]}, dry_run=True):
            return "rule " + _rule_label(rule)
    return "set or map elements"


def check(doc: Json) -> None:
    """Let the kernel validate ``doc`` without applying it; NftError names what it rejects."""
    _checked_doc(doc)
    err = _run(doc, dry_run=True)
    if err:
        raise NftError(f"nftables rejected {_locate(doc)}", err)


def _structure(doc: Json) -> Json:
    return {"nftables": [c for c in doc["nftables"]
                         if not (isinstance(c, dict) and "element" in c.get("add", {}))]}


def replace(doc: Json) -> None:
    """Check ``doc`` (without its elements), then apply it all as one transaction."""
    _checked_doc(doc)
    structure = _structure(doc)
    err = _run(structure, dry_run=True)
    if err:
        raise NftError(f"nftables rejected {_locate(structure)}", err)
    err = _run(doc)
    if err:
        raise NftError(f"nftables rejected {_locate(doc)}", err)


def update_elements(commands: Sequence[Json]) -> None:
    """Apply set/map element changes as one transaction."""
    if not commands:
        return
    for command in commands:
        verb = next(iter(command))
        if verb not in ("add", "delete") or set(command[verb]) != {"element"}:
            raise NftError("update_elements only changes set/map elements",
                           json.dumps(command)[:200])
    doc = _checked_doc({"nftables": list(commands)})
    err = _run_elements(doc)
    if err:
        raise NftError("nftables refused an element update", err)


def delete_tables(tables: Iterable[tuple[str, str]] = TABLES) -> None:
    """Remove vnet's tables (one transaction); gone already is fine."""
    commands: list[Json] = []
    for family, name in tables:
        if (family, name) not in TABLES:
            raise NftError(f"table {family} {name} is not vnet's")
        commands.append({"add": {"table": {"family": family, "name": name}}})
        commands.append({"delete": {"table": {"family": family, "name": name}}})
    err = _run({"nftables": commands})
    if err:
        raise NftError("cannot delete vnet's tables", err)


def list_table(family: str, name: str = "vnet") -> list[Json] | None:
    """One of vnet's tables as libnftables JSON objects (with handles); None if absent."""
    if (family, name) not in TABLES:
        raise NftError(f"table {family} {name} is not vnet's")
    ctx = _context()
    rc, out, err = ctx.cmd(f"list table {family} {name}")
    if rc != 0:
        if "No such file or directory" in err:
            return None
        raise NftError(f"cannot list table {family} {name}", err)
    data = json.loads(out)
    items: list[Json] = data.get("nftables", [])
    return items


def run_json(command: str) -> Json:
    """Run one read-only nft command line with JSON output (doctor: ``list ruleset``)."""
    ctx = _context()
    rc, out, err = ctx.cmd(command)
    if rc != 0:
        raise NftError(f"nft {command!r} failed", err)
    return json.loads(out) if out.strip() else {}


def port_marks() -> dict[str, int]:
    """The port ids vnet assigned (``bridge vnet`` map ``port_mark``): ifname -> mark."""
    ctx = _context()
    rc, out, err = ctx.cmd("list map bridge vnet port_mark")
    if rc != 0:
        if "No such file or directory" in err:
            return {}
        raise NftError("cannot list bridge vnet port_mark", err)
    marks: dict[str, int] = {}
    for item in json.loads(out).get("nftables", []):
        body = item.get("map") if isinstance(item, dict) else None
        if not body:
            continue
        for elem in body.get("elem", []):
            if isinstance(elem, list) and len(elem) == 2:
                marks[str(elem[0])] = int(elem[1])
    return marks


def _strip(obj: Any) -> Any:
    """A listed object without what the kernel assigns or counts (handles, counters)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("handle", "counter")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def fingerprint() -> str:
    """A digest of vnet's tables as the kernel holds them now (handles, counters and the
    dynamic ``mac_mismatch`` set left out; elements in a canonical order). Two listings of the
    same contents give the same digest; any edit of a rule, chain, set or element changes it."""
    import hashlib

    parts: list[Any] = []
    for family, name in TABLES:
        items = list_table(family, name)
        if items is None:
            parts.append([family, None])
            continue
        for item in items:
            if not isinstance(item, dict) or "metainfo" in item:
                continue
            body = next(iter(item.values()))
            if isinstance(body, dict) and body.get("name") == "mac_mismatch":
                body = {k: v for k, v in body.items() if k != "elem"}
            body = _strip(body)
            if isinstance(body, dict) and isinstance(body.get("elem"), list):
                body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
            parts.append([next(iter(item)), body])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def mac_mismatches() -> dict[str, int]:
    """Frames per port from a MAC its guest was not declared with (``bridge vnet`` set
    ``mac_mismatch``, counted by the kernel): ifname -> packets. {} without vnet's tables."""
    rc, out, err = _context().cmd("list set bridge vnet mac_mismatch")
    if rc != 0:
        if "No such file or directory" in err:
            return {}
        raise NftError("cannot list bridge vnet mac_mismatch", err)
    counts: dict[str, int] = {}
    for item in json.loads(out).get("nftables", []):
        body = item.get("set") if isinstance(item, dict) else None
        for elem in (body or {}).get("elem", []):
            inner = elem.get("elem") if isinstance(elem, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("val"), str):
                counter = inner.get("counter") or {}
                counts[inner["val"]] = int(counter.get("packets", 0))
    return counts


def base_chains_elsewhere() -> list[dict[str, Any]]:
    """Headers (family, table, name, hook, prio, policy) of base chains in tables vnet does not
    own. Read-only and for ``vnet doctor`` only: it lists chain headers, never rules, and vnet
    never changes what it finds."""
    data = run_json("list chains")
    out: list[dict[str, Any]] = []
    for item in data.get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if not chain or "hook" not in chain:
            continue
        if (chain.get("family"), chain.get("table")) in TABLES:
            continue
        out.append({k: chain.get(k) for k in ("family", "table", "name", "hook", "prio",
                                               "policy")})
    return out


def owned_tables_present() -> tuple[str, ...]:
    """Families of vnet's tables that exist (asks for each by name; lists nothing else)."""
    present = []
    for family, name in TABLES:
        rc, _out, err = _context().cmd(f"list table {family} {name}")
        if rc == 0:
            present.append(family)
        elif "No such file or directory" not in err:
            raise NftError(f"cannot look up table {family} {name}", err)
    return tuple(present)
