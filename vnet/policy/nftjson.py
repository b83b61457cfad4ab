"""Typed builders for the libnftables JSON schema (``man libnftables-json``).

Every nftables object vnet emits is built here from Python values, never from rule text: the
JSON encoder does all quoting, so a policy name with quotes or a 15-byte interface name cannot
change the meaning of a rule. Pure: no I/O, no imports from the rest of vnet.

Expressions and statements are plain ``dict``/``list`` values (the JSON shape itself); the
helpers only make them hard to get wrong. Commands are ``{"add": {...}}`` style objects; a
document is ``{"nftables": [metainfo, *commands]}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Json = Any  # a JSON value: dict, list, str, int, bool
Expr = Json
Stmt = dict[str, Json]
Command = dict[str, Json]

JSON_SCHEMA_VERSION = 1


# --- expressions ---------------------------------------------------------------------------


def payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def concat(*exprs: Expr) -> Expr:
    return {"concat": list(exprs)}


def prefix(addr: str, length: int) -> Expr:
    return {"prefix": {"addr": addr, "len": length}}


def range_(low: Json, high: Json) -> Expr:
    return {"range": [low, high]}


def anon_set(values: Sequence[Json]) -> Expr:
    """An anonymous set ``{ a, b }``; one value is emitted bare."""
    if len(values) == 1:
        return values[0]
    return {"set": list(values)}


def set_ref(name: str) -> Expr:
    return "@" + name


def map_lookup(key: Expr, data: Expr) -> Expr:
    return {"map": {"key": key, "data": data}}


def bitand(left: Expr, mask: int) -> Expr:
    return {"&": [left, mask]}


# --- statements ----------------------------------------------------------------------------


def set_update(set_name: str, elem: Expr) -> Stmt:
    """Add ``elem`` to a dynamic set (or refresh it); its element counter counts the packet."""
    return {"set": {"op": "update", "elem": elem, "set": set_ref(set_name)}}


def match(left: Expr, right: Expr, op: str = "==") -> Stmt:
    return {"match": {"op": op, "left": left, "right": right}}


def accept() -> Stmt:
    return {"accept": None}


def drop() -> Stmt:
    return {"drop": None}


def return_() -> Stmt:
    return {"return": None}


def reject() -> Stmt:
    return {"reject": None}


def counter() -> Stmt:
    return {"counter": None}


def limit(rate: int, per: str, burst: int = 0) -> Stmt:
    body: dict[str, Json] = {"rate": rate, "per": per}
    if burst:
        body["burst"] = burst
    return {"limit": body}


def log(prefix_: str, level: str = "warn") -> Stmt:
    return {"log": {"prefix": prefix_, "level": level}}


def vmap(key: Expr, data: Expr) -> Stmt:
    return {"vmap": {"key": key, "data": data}}


def set_meta(key: str, value: Expr) -> Stmt:
    return {"mangle": {"key": meta(key), "value": value}}


def masquerade() -> Stmt:
    return {"masquerade": None}


def dnat(family: str, addr: Expr, port: int | None = None) -> Stmt:
    body: dict[str, Json] = {"family": family, "addr": addr}
    if port is not None:
        body["port"] = port
    return {"dnat": body}


# --- objects and commands ------------------------------------------------------------------


def table(family: str, name: str) -> Json:
    return {"table": {"family": family, "name": name}}


def chain(
    family: str,
    table_: str,
    name: str,
    *,
    hook: str | None = None,
    prio: int = 0,
    type_: str = "filter",
    policy: str = "accept",
) -> Json:
    body: dict[str, Json] = {"family": family, "table": table_, "name": name}
    if hook is not None:
        body.update(type=type_, hook=hook, prio=prio, policy=policy)
    return {"chain": body}


def set_(
    family: str,
    table_: str,
    name: str,
    type_: str | Sequence[str],
    *,
    data: str | None = None,
    flags: Sequence[str] = (),
    elements: Sequence[Json] = (),
    comment: str | None = None,
    size: int | None = None,
    counters: bool = False,
) -> Json:
    """A named set, or a map when ``data`` is given (``"verdict"`` for a verdict map).
    ``counters``: every element counts the packets that hit it (read back with ``nft list``)."""
    body: dict[str, Json] = {
        "family": family,
        "table": table_,
        "name": name,
        "type": type_ if isinstance(type_, str) else list(type_),
    }
    if data is not None:
        body["map"] = data
    if flags:
        body["flags"] = list(flags)
    if elements:
        body["elem"] = list(elements)
    if comment:
        body["comment"] = comment
    if size is not None:
        body["size"] = size
    if counters:
        body["stmt"] = [counter()]
    return {"map" if data is not None else "set": body}


def element(family: str, table_: str, name: str, elements: Iterable[Json]) -> Json:
    return {"element": {"family": family, "table": table_, "name": name, "elem": list(elements)}}


def rule(
    family: str, table_: str, chain_: str, expr: Sequence[Stmt], comment: str | None = None
) -> Json:
    body: dict[str, Json] = {"family": family, "table": table_, "chain": chain_, "expr": list(expr)}
    if comment:
        body["comment"] = comment
    return {"rule": body}


def add(obj: Json) -> Command:
    return {"add": obj}


def delete(obj: Json) -> Command:
    return {"delete": obj}


def document(commands: Iterable[Command]) -> dict[str, Json]:
    return {
        "nftables": [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, *commands]
    }


def verdict_jump(chain_: str) -> Json:
    """Map data for a verdict map element: ``jump CHAIN``."""
    return {"jump": {"target": chain_}}
