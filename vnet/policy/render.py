"""Human-readable text of a compiled document, for ``vnet policy compile`` without ``--json``.

Display only: the text resembles ``nft list`` output so that it reads familiar, but vnet never
loads it (the kernel gets the JSON document). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Json = Any


def expr(e: Json) -> str:
    if isinstance(e, bool):
        return "true" if e else "false"
    if isinstance(e, int):
        return hex(e) if e > 0xFFFF else str(e)
    if isinstance(e, str):
        return e if e.startswith("@") or e.replace(":", "").replace(".", "").isalnum() \
            else '"' + e.replace('"', '\\"') + '"'
    if isinstance(e, list):
        return ", ".join(expr(x) for x in e)
    if not isinstance(e, dict) or len(e) != 1:
        return str(e)
    (key, body), = e.items()
    if key == "payload":
        return f"{body['protocol']} {body['field']}"
    if key == "meta":
        return f"meta {body['key']}"
    if key == "ct":
        return f"ct {body['key']}"
    if key == "fib":
        return f"fib {' . '.join(body.get('flags', []))} {body['result']}"
    if key == "concat":
        return " . ".join(expr(x) for x in body)
    if key == "prefix":
        return f"{body['addr']}/{body['len']}"
    if key == "range":
        return f"{expr(body[0])}-{expr(body[1])}"
    if key == "set":
        return "{ " + ", ".join(expr(x) for x in body) + " }"
    if key == "map":
        return f"{expr(body['key'])} map {expr(body['data'])}"
    if key == "&":
        return f"{expr(body[0])} & {expr(body[1])}"
    if key in ("jump", "goto"):
        return f"{key} {body['target']}"
    return f"{key} {body}"


def stmt(s: Json) -> str:
    (key, body), = s.items()
    if key == "match":
        op = body["op"]
        bitwise = isinstance(body["left"], dict) and "&" in body["left"]
        sep = " " if op in ("==", "in") and not bitwise else f" {op} "
        return f"{expr(body['left'])}{sep}{expr(body['right'])}"
    if key in ("accept", "drop", "reject", "return", "counter", "masquerade"):
        return str(key)
    if key in ("jump", "goto"):
        return f"{key} {body['target']}"
    if key == "mangle":
        return f"{expr(body['key'])} set {expr(body['value'])}"
    if key == "vmap":
        return f"{expr(body['key'])} vmap {expr(body['data'])}"
    if key == "limit":
        burst = f" burst {body['burst']} packets" if body.get("burst") else ""
        return f"limit rate {body['rate']}/{body['per']}{burst}"
    if key == "log":
        return f'log prefix "{body["prefix"]}"'
    if key == "dnat":
        port = f":{body['port']}" if "port" in body else ""
        return f"dnat {body.get('family', '')} to {expr(body['addr'])}{port}".replace("  ", " ")
    return f"{key} {body}"


def render(doc: Json, *, elements_limit: int = 8) -> str:
    """The document as nft-like text, tables in order, chains with their rules and comments;
    long element lists are cut to ``elements_limit`` entries with a count."""
    lines: list[str] = []
    chains: dict[tuple[str, str], list[str]] = {}
    headers: dict[tuple[str, str], str] = {}
    sets: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str, str]] = []  # (kind, family, name)
    for command in doc.get("nftables", []):
        add = command.get("add") if isinstance(command, dict) else None
        if not add:
            continue
        (kind, obj), = add.items()
        fam = obj.get("family", "")
        if kind == "table":
            if ("table", fam, obj["name"]) not in order:
                order.append(("table", fam, obj["name"]))
        elif kind == "chain":
            key = (fam, obj["name"])
            hook = (f"  type {obj['type']} hook {obj['hook']} priority {obj['prio']}; "
                    f"policy {obj['policy']};") if "hook" in obj else ""
            headers[key] = hook
            chains.setdefault(key, [])
            order.append(("chain", fam, obj["name"]))
        elif kind in ("set", "map"):
            key = (fam, obj["name"])
            typ = " . ".join(obj["type"]) if isinstance(obj["type"], list) else obj["type"]
            if "map" in obj:
                typ += f" : {obj['map']}"
            sets[key] = [f"  {kind} {obj['name']} {{ type {typ}"
                         + (f"; flags {', '.join(obj['flags'])}" if obj.get("flags") else "")
                         + " }" + (f"  # {obj['comment']}" if obj.get("comment") else "")]
            sets[key].extend(_elements(obj.get("elem", []), elements_limit))
            order.append(("set", fam, obj["name"]))
        elif kind == "rule":
            text = " ".join(stmt(s) for s in obj["expr"])
            if obj.get("comment"):
                text += f"  # {obj['comment']}"
            chains.setdefault((fam, obj["chain"]), []).append("    " + text)
        elif kind == "element":
            sets.setdefault((fam, obj["name"]), []).extend(
                _elements(obj["elem"], elements_limit))
    for kind, fam, name in order:
        if kind == "table":
            lines.append(f"table {fam} {name}")
        elif kind == "set":
            lines.extend(sets.get((fam, name), []))
        else:
            lines.append(f"  chain {name}" + (f"\n  {headers[(fam, name)]}"
                                              if headers.get((fam, name)) else ""))
            lines.extend(chains.get((fam, name), []))
    return "\n".join(lines) + "\n"


def _elements(elems: Iterable[Json], limit: int) -> list[str]:
    items = list(elems)
    if not items:
        return []
    shown = [_element(e) for e in items[:limit]]
    more = f", ... ({len(items)} elements)" if len(items) > limit else ""
    return ["    elements = { " + ", ".join(shown) + more + " }"]


def _element(e: Json) -> str:
    if isinstance(e, list) and len(e) == 2:
        return f"{expr(e[0])} : {expr(e[1])}"
    return expr(e)
