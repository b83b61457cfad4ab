"""Definition files -> the validated model. Collects EVERY problem, raises ConfigError once.

A config dir holds one network per ``*.yaml`` / ``*.yml`` file. Problems are reported as
``FILE:LINE: key.path: message``. Pure apart from reading the files it is given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from vnet.config.network import read_network
from vnet.config.source import load_yaml
from vnet.errors import ConfigError, Problem
from vnet.model import Model, Network
from vnet.policy.library import policy_names


def definition_files(config_dir: Path) -> list[Path]:
    if not config_dir.is_dir():
        raise ConfigError([Problem(str(config_dir), 0, "", "config dir does not exist")])
    return sorted(p for p in config_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def read_networks(files: Iterable[Path], policy_dir: Path | None,
                  problems: list[Problem]) -> list[Network]:
    known = policy_names(policy_dir)
    networks: list[Network] = []
    for path in files:
        doc = load_yaml(path, problems)
        if doc is None:
            if not any(p.file == str(path) for p in problems):
                problems.append(Problem(str(path), 1, "", "file is empty"))
            continue
        net = read_network(str(path), doc, problems, known)
        if net is not None:
            networks.append(net)
    check_across(networks, problems)
    return networks


def check_across(networks: list[Network], problems: list[Problem]) -> None:
    """Problems between networks: names, bridges, port names and subnets must not collide."""
    seen_name: dict[str, Network] = {}
    seen_if: dict[str, tuple[Network, str]] = {}
    subnets: list[tuple[ipaddress.IPv4Network, Network]] = []
    for net in networks:
        if net.name in seen_name:
            problems.append(Problem(net.source, 1, "name",
                                    f"network {net.name!r} is also defined in {seen_name[net.name].source}"))
            continue
        seen_name[net.name] = net
        ifs = [(net.bridge.name, "bridge.name")] if net.bridge else []
        ifs += [(g.ifname, f"guests[{i}]") for i, g in enumerate(net.guests)]
        if net.uplink and net.uplink.bond:
            ifs.append((net.uplink.bond.name, "uplink.bond.name"))
        for ifname, where in ifs:
            if ifname in seen_if:
                other, other_where = seen_if[ifname]
                if other is not net:
                    problems.append(Problem(net.source, 1, where,
                                            f"interface {ifname!r} is also used by network "
                                            f"{other.name!r} ({other.source}: {other_where})"))
            else:
                seen_if[ifname] = (net, where)
        if net.ipv4 is not None:
            for subnet, other in subnets:
                if subnet.overlaps(net.ipv4.network):
                    problems.append(Problem(net.source, 1, "ipv4.address",
                                            f"subnet {net.ipv4.network} overlaps {subnet} of "
                                            f"network {other.name!r}"))
            subnets.append((net.ipv4.network, net))


def load_model(config_dir: Path, policy_dir: Path | None = None) -> Model:
    """Every network in ``config_dir``; ConfigError listing all problems if any."""
    problems: list[Problem] = []
    networks = read_networks(definition_files(config_dir), policy_dir, problems)
    if problems:
        raise ConfigError(problems)
    return Model(networks=tuple(sorted(networks, key=lambda n: n.name)))


def validate_paths(paths: Iterable[Path], policy_dir: Path | None = None) -> list[Problem]:
    """Problems in the given files and directories (a directory means its definition files)."""
    return check_paths(paths, policy_dir)[0]


def check_paths(paths: Iterable[Path], policy_dir: Path | None = None) -> tuple[list[Problem], Model]:
    """Problems in the given files and directories, and the networks that could be read."""
    problems: list[Problem] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            try:
                files.extend(definition_files(path))
            except ConfigError as err:
                problems.extend(err.problems)
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
    networks = read_networks(files, policy_dir, problems)
    return sorted(problems), Model(networks=tuple(sorted(networks, key=lambda n: n.name)))
