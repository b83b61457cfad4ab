"""A DHCP test lab: a host namespace with a bridge, guest namespaces on veth ports, and a
``vnet daemon`` running in the host namespace. Used by the DHCP and daemon privileged tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import VNET, NetnsFactory, ns_exec, sh, veth_into, wait_for
from vnet import api

BRIDGE = "vn-lab"
CONFIG = """\
name: lab
mode: nat
bridge: {name: vn-lab}
ipv4:
  address: 10.77.0.1/24
  dhcp:
    ranges: [10.77.0.100-10.77.0.199]
    lease-time: 1h
    mtu: 1400
    routes: [{to: 192.168.50.0/24, via: 10.77.0.1}]
    reservations:
      - {mac: "52:54:00:00:00:10", ip: 10.77.0.10, name: web1}
dns: {domain: lab.test}
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
# Configure the address (so a renew can be unicast), then record the event's environment.
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
{record}
"""

DHCLIENT_SCRIPT = """\
#!/bin/sh
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface" ;;
esac
{record}
"""

DHCLIENT_CONF = """\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name,
        interface-mtu, rfc3442-classless-static-routes;
"""


def record_env(out: Path, client: str, event: str) -> str:
    """Shell lines a client script ends with: its environment lands in ``OUT/CLIENT.EVENT.env``
    in one step (written under a temporary name, then renamed), so a reader that sees the file
    sees all of it. ``event`` is a shell expression (``$1``, ``$reason``)."""
    final = f'"{out}/{client}.{event}.env"'
    return f'env > {final}.tmp.$$ && mv -f {final}.tmp.$$ {final}'


def script_text(template: str, out: Path, client: str, event: str) -> str:
    return template.replace("{record}", record_env(out, client, event))


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env dump (single-line values are enough here)."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value.strip("'")
    return env


def wait_env(path: Path, timeout: float = 20.0) -> dict[str, str]:
    """The record a client script wrote to ``path`` (waits until it appears, complete)."""
    assert wait_for(path.exists, timeout=timeout), f"{path.name} never appeared"
    return read_env(path)


class DhcpLab:
    def __init__(
        self, netns: NetnsFactory, tmp: Path, config: str = CONFIG, manual_l2: bool = True
    ) -> None:
        self.netns = netns
        self.tmp = tmp
        self.host = netns("h")
        self.config_dir = tmp / "config"
        self.state_dir = tmp / "state"
        self.run_dir = tmp / "run"
        self.out = tmp / "out"
        for d in (self.config_dir, self.state_dir, self.run_dir, self.out):
            d.mkdir()
        (self.config_dir / "lab.yaml").write_text(config)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        self._guests = 0
        self.manual_l2 = manual_l2
        if manual_l2:
            sh("ip", "-n", self.host, "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "-n", self.host, "addr", "add", "10.77.0.1/24", "dev", BRIDGE)
            sh("ip", "-n", self.host, "link", "set", BRIDGE, "up")
        self.udhcpc_script = self._script("udhcpc.sh", UDHCPC_SCRIPT, "udhcpc", "$1")
        self.dhclient_script = self._script("dhclient.sh", DHCLIENT_SCRIPT, "dhclient", "$reason")
        (tmp / "dhclient.conf").write_text(DHCLIENT_CONF)

    def _script(self, name: str, template: str, client: str, event: str) -> Path:
        path = self.tmp / name
        path.write_text(script_text(template, self.out, client, event))
        path.chmod(0o755)
        return path

    def event(self, client: str, event: str, timeout: float = 20.0) -> dict[str, str]:
        """What ``client``'s script recorded for ``event`` (e.g. udhcpc bound), waiting for it."""
        return wait_env(self.out / f"{client}.{event}.env", timeout)

    def forget(self, client: str, event: str) -> None:
        """Remove a recorded event, so the next wait sees a new one."""
        (self.out / f"{client}.{event}.env").unlink(missing_ok=True)

    def guest(self, mac: str, ifname: str = "eth0") -> str:
        """A guest namespace whose ``ifname`` (MAC ``mac``) is a port of the bridge."""
        ns = self.netns("g")
        self._guests += 1
        port = f"vg{self._guests}"
        veth_into(self.host, ns, port, ifname, mac)
        sh("ip", "-n", self.host, "link", "set", port, "master", BRIDGE)
        return ns

    def write_config(self, text: str) -> None:
        (self.config_dir / "lab.yaml").write_text(text)

    def start_daemon(self, *extra: str) -> None:
        log = self.log.open("ab")
        apply = ["--no-apply"] if self.manual_l2 else []
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.host, VNET, "daemon", *apply,
             "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
             "--run-dir", str(self.run_dir), "--policy-dir", str(self.tmp / "nopolicies"),
             *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.logtext()}")
            try:
                api.call(self.run_dir, "GET", "/v1/status", timeout=1)
            except Exception:
                return False
            return True

        assert wait_for(ready, timeout=20), self.logtext()

    def logtext(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(timeout=20)
        self.daemon = None
        return code

    def status(self) -> dict[str, object]:
        result: dict[str, object] = api.call(self.run_dir, "GET", "/v1/status")
        return result

    def leases(self, *args: str) -> str:
        return sh(VNET, "leases", "--state-dir", str(self.state_dir), *args).stdout

    def udhcpc(self, ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """One lease (``-q``): returns once the client's script has recorded it."""
        self.forget("udhcpc", "bound")
        return ns_exec(ns, "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1", "-i", "eth0",
                       "-s", str(self.udhcpc_script), *args, timeout=timeout)

    def udhcpc_daemon(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        """udhcpc staying in the foreground (USR1 renews, USR2 releases)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "udhcpc", "-f", "-t", "5", "-T", "1", "-i", "eth0",
             "-s", str(self.udhcpc_script), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def dhclient(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        self.forget("dhclient", "BOUND")
        return ns_exec(
            ns, "dhclient", "-1", "-v", "-cf", str(self.tmp / "dhclient.conf"),
            "-sf", str(self.dhclient_script), "-lf", str(self.tmp / f"{ns}.leases"),
            "-pf", str(self.tmp / f"{ns}.pid"), *args, "eth0", timeout=40,
        )

    def close(self) -> None:
        if self.daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait(timeout=10)
            self.daemon = None


def dedent(text: str) -> str:
    return textwrap.dedent(text)
