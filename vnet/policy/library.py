"""The policy library: built-in policies plus the user's, and profiles resolved from them.

``load_library`` reads ``vnet/policies/*.yaml`` (shipped) and then the user's policy dir; a user
file overrides a built-in of the same name. ``Library.profile(names)`` flattens a list of policy
names (a network's then a guest's) into one ordered rule list per direction, expanding
``include:`` depth-first (each policy at most once, at its first mention). Only file reading
happens here; everything else is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vnet.errors import ConfigError, Problem
from vnet.policy.ast import DIRECTIONS, Policy, Rule, SetDef, Source, parse_policy

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "policies"


def _display(path: Path) -> str:
    """Built-ins are shown as ``vnet/policies/NAME.yaml``; user files by their path."""
    try:
        return "vnet/policies/" + str(path.relative_to(BUILTIN_DIR))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Flow:
    """One direction of a resolved profile: ordered rules and the default verdict."""

    rules: tuple[Rule, ...]
    default: str
    default_source: Source | None


@dataclass(frozen=True)
class Profile:
    """The flattened policies one guest port gets."""

    names: tuple[str, ...]
    inbound: Flow
    outbound: Flow
    sets: tuple[SetDef, ...]
    host: Flow = Flow((), "drop", None)

    def flow(self, direction: str) -> Flow:
        return {"inbound": self.inbound, "outbound": self.outbound, "host": self.host}[direction]


class Library:
    """Policies by name; immutable once loaded."""

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self.policies = dict(sorted(policies.items()))
        self._profiles: dict[tuple[str, ...], Profile] = {}

    def names(self) -> set[str]:
        return set(self.policies)

    def check(self) -> list[Problem]:
        """Problems across files: unknown includes, include cycles."""
        problems: list[Problem] = []
        for policy in self.policies.values():
            for name, src in policy.includes:
                if name not in self.policies:
                    problems.append(Problem(src.file, src.line, "include",
                                            f"unknown policy {name!r}"))
            try:
                self._expand(policy.name, [], set())
            except _Cycle as cyc:
                problems.append(Problem(policy.source.file, policy.source.line, "include",
                                        f"include cycle: {' -> '.join(cyc.path)}"))
        return sorted(set(problems))

    def _expand(self, name: str, stack: list[str], seen: set[str]) -> list[Policy]:
        if name in stack:
            raise _Cycle([*stack, name])
        if name in seen or name not in self.policies:
            return []
        seen.add(name)
        policy = self.policies[name]
        out: list[Policy] = []
        for inc, _ in policy.includes:
            out.extend(self._expand(inc, [*stack, name], seen))
        out.append(policy)
        return out

    def profile(self, names: Iterable[str]) -> Profile:
        """Flatten ``names`` (in order) into one profile; KeyError names an unknown policy."""
        key = tuple(names)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        seen: set[str] = set()
        order: list[Policy] = []
        for name in key:
            if name not in self.policies:
                raise KeyError(name)
            order.extend(self._expand(name, [], seen))
        flows: dict[str, Flow] = {}
        for direction in DIRECTIONS:
            rules: list[Rule] = []
            for policy in order:
                rules.extend(policy.direction(direction).rules)
            # towards the host itself only DHCP, DNS and TFTP pass unless a policy allows more
            default, default_source = ("drop" if direction == "host" else "accept"), None
            # The default of the last listed (top-level) policy that declares one wins.
            for name in key:
                d = self.policies[name].direction(direction)
                if d.default is not None:
                    default, default_source = d.default, d.default_source
            flows[direction] = Flow(tuple(rules), default, default_source)
        sets = tuple(s for policy in order for s in policy.sets)
        profile = Profile(key, flows["inbound"], flows["outbound"], sets, flows["host"])
        self._profiles[key] = profile
        return profile


class _Cycle(Exception):
    def __init__(self, path: list[str]) -> None:
        self.path = path


def _policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())


def policy_names(policy_dir: Path | None) -> set[str]:
    """Names of the built-in policies and the user's (file stems), without parsing them."""
    dirs = [BUILTIN_DIR] + ([policy_dir] if policy_dir is not None and policy_dir.is_dir() else [])
    return {p.stem for d in dirs for p in _policy_files(d)}


def load_library(policy_dir: Path | None = None) -> Library:
    """Built-in policies overridden by same-named files in ``policy_dir``; ConfigError lists
    every problem in every file (FILE:LINE)."""
    problems: list[Problem] = []
    policies: dict[str, Policy] = {}
    dirs = [BUILTIN_DIR]
    if policy_dir is not None and policy_dir.is_dir():
        dirs.append(policy_dir)
    for directory in dirs:
        for path in _policy_files(directory):
            shown = _display(path)
            try:
                policy = parse_policy(path.read_text(encoding="utf-8"), shown, path.stem)
            except ConfigError as err:
                problems.extend(err.problems)
                continue
            except (OSError, UnicodeDecodeError) as err:
                problems.append(Problem(shown, 0, "", f"cannot read: {err}"))
                continue
            if policy.name != path.stem:
                problems.append(Problem(shown, 1, "name", f"{policy.name!r} must match the file "
                                        f"name {path.stem!r}"))
                continue
            policies[policy.name] = policy
    library = Library(policies)
    problems.extend(library.check())
    if problems:
        raise ConfigError(problems)
    return library


def library_from_texts(texts: Mapping[str, str], base: Library | None = None) -> Library:
    """A library from in-memory files ``{display_name: yaml_text}`` over ``base`` (tests, golden
    cases); the policy name is the display name's stem."""
    problems: list[Problem] = []
    policies = dict(base.policies) if base is not None else {}
    for shown, text in texts.items():
        stem = Path(shown).stem
        try:
            policies[stem] = parse_policy(text, shown, stem)
        except ConfigError as err:
            problems.extend(err.problems)
    library = Library(policies)
    problems.extend(library.check())
    if problems:
        raise ConfigError(problems)
    return library

