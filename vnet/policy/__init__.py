"""Filter policies: YAML files -> checked AST -> nftables JSON for vnet's own tables.

Public entry points (used by ``vnet apply``/``down``/``validate`` and the filter service):
``load_library``, ``policy_names``, ``compile_ruleset``, ``compile_state``, ``element_changes``
(old document -> new one as element changes, when possible), ``policy_problems`` and
``validate_policies``. Everything in this package is pure; the kernel side is
``vnet.host.nft``.
"""

from __future__ import annotations

from pathlib import Path

from vnet.errors import Problem
from vnet.model import Model
from vnet.policy.compile import (
    Compiled,
    Leases,
    binding_commands,
    compile_ruleset,
    compile_state,
    element_changes,
    policy_problems,
    port_commands,
)
from vnet.policy.library import Library, Profile, load_library, policy_names


def validate_policies(model: Model, policy_dir: Path | None) -> list[Problem]:
    """Every policy problem for ``vnet validate``: bad policy files (FILE:LINE) and the model's
    use of policies (unknown names, unfilterable guests, bad port forwards)."""
    from vnet.errors import ConfigError

    try:
        library = load_library(policy_dir)
    except ConfigError as err:
        return list(err.problems)
    return policy_problems(model, library)


__all__ = [
    "Compiled",
    "Leases",
    "Library",
    "Profile",
    "binding_commands",
    "compile_ruleset",
    "compile_state",
    "element_changes",
    "load_library",
    "policy_names",
    "policy_problems",
    "port_commands",
    "validate_policies",
]
