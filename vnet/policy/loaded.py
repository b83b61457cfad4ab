"""What vnet's tables hold, as the daemon keeps it in memory: structure + set/map elements. Pure.

``Loaded.of(doc)`` splits a document into its structure (tables, chains, rules, sets without
their elements) and its elements per set; ``apply(commands)`` follows element changes made
after loading (a guest attached, a lease bound), so the owner never re-reads a copy from disk
or the kernel to know what it loaded; ``changes_to(doc)`` is the element changes that turn it
into ``doc``, or None when the structure differs (then ``doc`` replaces the tables).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from vnet.policy import nftjson as nj

TABLE = "vnet"


def _key(elem: nj.Json) -> str:
    return json.dumps(elem, sort_keys=True)


def _set_key(elem: nj.Json) -> nj.Json:
    """What deletes an element: a map element by its key, a set element by itself."""
    return elem[0] if isinstance(elem, list) else elem


@dataclass
class Loaded:
    """``elems``: per (family, set name), element by its key (a map element by its map key), so
    following one change costs O(1) whatever the size of the set."""

    structure: list[nj.Command] = field(default_factory=list)
    elems: dict[tuple[str, str], dict[str, nj.Json]] = field(default_factory=dict)

    @classmethod
    def of(cls, doc: nj.Json) -> Loaded:
        out = cls()
        for command in doc.get("nftables", []) if isinstance(doc, dict) else ():
            if not isinstance(command, dict) or "metainfo" in command:
                continue  # document() writes its own
            body = command.get("add", {}).get("element")
            if body is not None:
                out._add(body["family"], body["name"], body["elem"])
                continue
            if "add" in command:
                kind, obj = next(iter(command["add"].items()))
                if isinstance(obj, dict) and "elem" in obj:  # a set declared with elements
                    out._add(obj["family"], obj["name"], obj["elem"])
                    command = {"add": {kind: {k: v for k, v in obj.items() if k != "elem"}}}
            out.structure.append(command)
        return out

    def copy(self) -> Loaded:
        """A copy that later changes to this one do not touch (elements are never mutated in
        place, only replaced: copying the buckets is enough)."""
        return Loaded(list(self.structure), {k: dict(v) for k, v in self.elems.items()})

    def _add(self, family: str, name: str, elements: Iterable[nj.Json]) -> None:
        bucket = self.elems.setdefault((family, name), {})
        for e in elements:
            bucket[_key(_set_key(e))] = e

    def apply(self, commands: Iterable[nj.Command]) -> None:
        """Follow element changes (``add``/``delete`` of ``element`` commands) made after loading."""
        for command in commands:
            verb, body = next(iter(command.items()))
            element = body.get("element") if isinstance(body, dict) else None
            if element is None:
                continue
            if verb == "add":
                self._add(element["family"], element["name"], element["elem"])
                continue
            bucket = self.elems.get((element["family"], element["name"]), {})
            for e in element["elem"]:  # deletes name keys (a map's) or whole set elements
                bucket.pop(_key(_set_key(e)), None)

    def changes_to(self, doc: nj.Json) -> list[nj.Command] | None:
        new = Loaded.of(doc)
        if new.structure != self.structure:
            return None
        deletes: list[nj.Command] = []
        adds: list[nj.Command] = []
        for key in sorted(set(self.elems) | set(new.elems)):
            before, after = self.elems.get(key, {}), new.elems.get(key, {})
            # a map element whose value changed is a delete and an add
            gone = [before[k] for k in sorted(before) if k not in after or after[k] != before[k]]
            came = [after[k] for k in sorted(after) if k not in before or before[k] != after[k]]
            fam, name = key
            if gone:
                deletes.append(nj.delete(nj.element(fam, TABLE, name, [_set_key(e) for e in gone])))
            if came:
                adds.append(nj.add(nj.element(fam, TABLE, name, came)))
        return deletes + adds

    def document(self) -> dict[str, nj.Json]:
        """The document that loads exactly this (structure, then every element)."""
        commands = list(self.structure)
        for (fam, name), bucket in sorted(self.elems.items()):
            if bucket:
                commands.append(nj.add(nj.element(fam, TABLE, name, list(bucket.values()))))
        return nj.document(commands)
