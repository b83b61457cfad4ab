"""Network services run by the daemon (DHCP, DNS, TFTP): thin transports around pure cores.

Each service module exposes a factory ``create(network, ctx) -> Service | None`` (None when the
network does not want that service); ``vnet.serve.registry`` lists the factories. A Service owns
its sockets and threads; ``start`` returns once it is listening, ``stop`` returns once it has
released them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vnet.events import EventBus

Elements = Callable[[Sequence[Any]], None]


@dataclass(frozen=True)
class ServiceContext:
    state_dir: Path
    run_dir: Path
    events: EventBus
    # How services change set/map elements of vnet's tables. The daemon passes its own, which
    # also records the change in what it knows is loaded (one owner of the filter state).
    nft_elements: Elements | None = None


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict[str, int]: ...
