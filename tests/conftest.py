"""Shared fixtures: privileged tests own their network namespaces and the processes they start.

Every namespace is named ``vnt<pid>x<n>`` (unique per run), gets ``lo`` up, and is deleted on
teardown, also when the test fails; processes still inside it are killed by PID first.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
VNET = str(VENV_BIN / "vnet")
_counter = itertools.count()
NS_PREFIX = os.environ.get("VNET_TEST_NS_PREFIX", "vnt")


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (network namespaces)")


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; on failure raise with its stderr in the message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc  # type: ignore[no-any-return]


def ns_exec(
    ns: str, *cmd: str, check: bool = True, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout, **kw)


def kill_ns_pids(name: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_netns(name: str) -> None:
    kill_ns_pids(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


class NetnsFactory:
    """Creates namespaces for one test and removes them all afterwards."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, tag: str = "") -> str:
        name = f"{NS_PREFIX}{os.getpid()}x{next(_counter)}{tag}"[:32]
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def cleanup(self) -> None:
        for name in reversed(self.created):
            delete_netns(name)
        self.created.clear()


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    if not is_root():
        pytest.skip("needs root (network namespaces)")
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def host_ns(netns_factory: NetnsFactory) -> str:
    """A fresh namespace playing the KVM host under test."""
    return netns_factory("h")


def veth_into(host: str, guest_ns: str, host_if: str, guest_if: str = "eth0", mac: str | None = None) -> None:
    """A veth pair: ``host_if`` in ``host``, ``guest_if`` in ``guest_ns`` (both up)."""
    sh("ip", "-n", host, "link", "add", host_if, "type", "veth", "peer", "name", guest_if, "netns", guest_ns)
    if mac:
        sh("ip", "-n", guest_ns, "link", "set", guest_if, "address", mac)
    sh("ip", "-n", host, "link", "set", host_if, "up")
    sh("ip", "-n", guest_ns, "link", "set", guest_if, "up")


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
