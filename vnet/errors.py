"""The vnet error tree. Imports nothing from vnet.

    VnetError                      every error vnet raises on purpose
     +-- ConfigError               bad definition or policy files; carries every Problem found
     +-- CapabilityError           the kernel lacks a feature a definition needs
     +-- HostError                 a kernel/netlink/nftables operation failed (cause chained)
     |    +-- ConflictError        a name is held by something vnet did not create
     +-- ApiError                  a bad request to, or failure of, the local API
     +-- HookError                 bad hook arguments

Messages name the object and the source (file:line and key path when it came from a file).
Raw library exceptions never leave ``vnet.host``: they are chained as ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass


class VnetError(Exception):
    """Base of every error vnet raises on purpose."""


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in an input file: where it is and what is wrong."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(VnetError):
    """One or more problems in definition or policy files (all of them, sorted)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CapabilityError(VnetError):
    """The running kernel lacks a feature that a definition asks for."""


class HostError(VnetError):
    """A change or read of the host (netlink, nftables, sysctl) failed."""


class ConflictError(HostError):
    """A name vnet wants is held by a link vnet did not create (or of another kind)."""


class ApiError(VnetError):
    """A bad request to the local API, or the daemon could not be reached."""


class HookError(VnetError):
    """A guest hook was called with arguments vnet cannot act on."""
