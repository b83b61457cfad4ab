"""YAML reading that remembers where every value came from, and a reader that collects problems.

``load_yaml`` returns plain dicts/lists/scalars built by PyYAML's safe loader, with each mapping
and sequence wrapped so the line of each key/item can be looked up. ``Reader`` walks such a
document by key path, converts values to types and records every problem as
``FILE:LINE: key.path: message`` instead of stopping at the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vnet.errors import Problem

T = TypeVar("T")


class LineDict(dict[Any, Any]):
    """A mapping from YAML with ``line`` (1-based) of itself and ``key_lines`` of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A sequence from YAML with ``line`` of itself and ``item_lines`` of each item."""

    line: int = 0
    item_lines: list[int]


# libyaml's parser when PyYAML has it (5x faster on a 1,000-guest file), same constructors.
_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
# YAML 1.1 reads "52:54:00:00:00:10"-like and "1:30" values as sexagesimal ints; keep such
# scalars as strings so a MAC written without quotes still means a MAC.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int" or not rx.match("1:2")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0[0-7_]+)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


def load_yaml(path: Path, problems: list[Problem]) -> Any:
    """Parse ``path``; on a syntax error record a problem and return None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem(str(path), 0, "", f"cannot read: {err}"))
        return None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        problems.append(Problem(str(path), line, "", f"invalid YAML: {err.problem or err}"))
    except yaml.YAMLError as err:
        problems.append(Problem(str(path), 0, "", f"invalid YAML: {err}"))
    return None


_MISSING = object()


class Reader:
    """Reads one mapping of a document, tracking its key path and the problems found."""

    def __init__(
        self, file: str, node: Any, path: str, problems: list[Problem], line: int = 0
    ) -> None:
        self.file = file
        self.node = node
        self.path = path
        self.problems = problems
        self.line = getattr(node, "line", 0) or line

    # -- locating -------------------------------------------------------------------------
    def key_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str | int) -> int:
        if isinstance(self.node, LineDict):
            return self.node.key_lines.get(key, self.line)
        if isinstance(self.node, LineList) and isinstance(key, int):
            return self.node.item_lines[key] if key < len(self.node.item_lines) else self.line
        return self.line

    def problem(self, key: str | int | None, message: str) -> None:
        line = self.line if key is None else self.line_of(key)
        path = self.path if key is None else self.key_path(key)
        self.problems.append(Problem(self.file, line, path, message))

    # -- structure ------------------------------------------------------------------------
    def expect_mapping(self) -> bool:
        if not isinstance(self.node, dict):
            self.problem(None, f"must be a mapping, not {_kind(self.node)}")
            return False
        return True

    def only_keys(self, allowed: set[str]) -> None:
        if not isinstance(self.node, dict):
            return
        for key in self.node:
            if key not in allowed:
                hint = _closest(str(key), allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                known = ", ".join(sorted(allowed))
                self.problem(key, f"unknown key{extra}; known keys: {known}")

    def has(self, key: str | int) -> bool:
        return isinstance(self.node, dict) and key in self.node

    def raw(self, key: str | int) -> Any:
        return self.node.get(key) if isinstance(self.node, dict) else None

    def child(self, key: str) -> Reader:
        return Reader(self.file, self.raw(key), self.key_path(key), self.problems, self.line_of(key))

    def items(self, key: str) -> Iterator[tuple[int, Reader]]:
        """Readers for each item of the list at ``key`` (a problem if it is not a list)."""
        value = self.raw(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.problem(key, f"must be a list, not {_kind(value)}")
            return
        holder = Reader(self.file, value, self.key_path(key), self.problems, self.line_of(key))
        for i, item in enumerate(value):
            yield i, Reader(self.file, item, holder.key_path(i), self.problems, holder.line_of(i))

    # -- typed values ---------------------------------------------------------------------
    def convert(
        self, key: str | int, fn: Callable[[Any], T], default: T | None = None, required: bool = False
    ) -> T | None:
        """``fn(value)``; a ValueError/TypeError from ``fn`` becomes a problem at ``key``."""
        if not self.has(key) or self.raw(key) is None:
            if required:
                self.problem(None, f"missing required key {key!r}")
            return default
        try:
            return fn(self.raw(key))
        except (ValueError, TypeError) as err:
            self.problem(key, str(err))
            return default

    def value(self, fn: Callable[[Any], T]) -> T | None:
        """Convert this reader's own node (a list item, say)."""
        try:
            return fn(self.node)
        except (ValueError, TypeError) as err:
            self.problem(None, str(err))
            return None


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.7)
    return found[0] if found else None


# -- value converters (raise ValueError with a message naming the value) ----------------------


def as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {_kind(value)}")
    return value


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_kind(value)}")
    return value


def as_int(lo: int, hi: int, what: str = "value") -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"{what} {value} is outside {lo}..{hi}")
        return value

    return conv


def as_ipv4(value: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IPv4 address") from err


_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def as_duration(value: Any) -> int:
    """``3600``, ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` -> seconds (at least 60)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 1h or 3600, not {value!r}")
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration (use seconds or 30m, 1h, 2d)")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not 60 <= seconds <= 2**31 - 1:
        raise ValueError(f"{value!r} must be between 60 s and 68 years")
    return seconds
