"""``vnet daemon``: load the model, apply L2, run the network services, serve the local API.

Foreground process. Start: lock and write ``RUN_DIR/vnet.pid`` (a second daemon on the same run
dir is refused), load the model, apply it (unless ``apply_l2`` is off), start every service of
``vnet.serve.registry`` for each network, listen on ``RUN_DIR/vnet.sock``. SIGHUP: reload the
files and restart only the services of networks whose definition changed (a bad file keeps the
old model running). SIGTERM/SIGINT: stop services (they drain: pending lease commits are
flushed), close the lease store, remove the pid file and socket. One lock serialises reloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vnet import api
from vnet.errors import ApiError, ConfigError, VnetError
from vnet.events import EventBus
from vnet.leases import close_store, read_leases, store_for
from vnet.model import Model, Network
from vnet.serve import Service, ServiceContext

log = logging.getLogger(__name__)

PID_NAME = "vnet.pid"


@dataclass(frozen=True)
class DaemonOptions:
    config_dir: Path
    state_dir: Path
    run_dir: Path
    policy_dir: Path | None = None
    apply_l2: bool = True


def load(options: DaemonOptions) -> Model:
    """The model from the definition files (raises ConfigError listing every problem)."""
    from vnet.config import load_model  # the lead's loader; imported late to keep start cheap

    policy_dir = options.policy_dir if options.policy_dir and options.policy_dir.exists() else None
    return load_model(options.config_dir, policy_dir)


def apply_l2(model: Model, options: DaemonOptions) -> list[str]:
    """Bridges, ports and the bridge addresses of ``model`` (``vnet.reconcile``)."""
    from vnet.reconcile import apply_model  # pulls in pyroute2: only when applying

    return apply_model(model, policy_dir=options.policy_dir, state_dir=options.state_dir)


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.events = EventBus()
        self.ctx = ServiceContext(options.state_dir, options.run_dir, self.events)
        self.model = Model()
        self.services: dict[str, list[Service]] = {}
        self.started = time.time()
        self._lock = threading.Lock()
        # Self-pipe: signals (through set_wakeup_fd) and API requests wake the main loop. A signal
        # handler must never take a lock the interrupted main thread may hold (Event.set() from
        # a handler deadlocked against Event.wait() in the main thread).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._reload = False
        self._pid_fd: int | None = None
        self.api = api.ApiServer(api.socket_path(options.run_dir))
        self.api.register("status", self._api_status)
        self.api.register("leases", self._api_leases)
        self.api.register("reload", self._api_reload)

    # ----- lifecycle -----

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._lock_pidfile()
        try:
            self.start()
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_signal)
            log.info("vnet daemon running (pid %d, %d networks)", os.getpid(),
                     len(self.model.networks))
            while True:
                select.select([self._wake_r], [], [])
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(512):
                        pass
                if self._stop:
                    break
                if self._reload:
                    self._reload = False
                    self.reload()
        finally:
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Flags only: the wakeup fd has already woken the main loop.
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def start(self) -> None:
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        store_for(self.options.state_dir)
        model = load(self.options)
        if self.options.apply_l2:
            for line in apply_l2(model, self.options):
                log.info("apply: %s", line)
        with self._lock:
            self.model = model
            for network in model.networks:
                self._start_network(network)
        self.api.start()

    def reload(self) -> None:
        """Re-read the files; restart services of networks that changed."""
        try:
            model = load(self.options)
        except ConfigError as err:
            log.error("reload refused, keeping the running model:\n%s", err)
            return
        try:
            if self.options.apply_l2:
                for line in apply_l2(model, self.options):
                    log.info("apply: %s", line)
        except VnetError as err:
            log.error("reload: apply failed: %s", err)
        with self._lock:
            old = {n.name: n for n in self.model.networks}
            new = {n.name: n for n in model.networks}
            for name, network in old.items():
                if new.get(name) != network:
                    self._stop_network(name)
            for name, network in new.items():
                if old.get(name) != network:
                    self._start_network(network)
            self.model = model
        log.info("reloaded: %d networks", len(model.networks))

    def shutdown(self) -> None:
        self.api.stop()
        with self._lock:
            for name in list(self.services):
                self._stop_network(name)
        close_store(self.options.state_dir)
        self._unlock_pidfile()
        log.info("vnet daemon stopped")

    def _start_network(self, network: Network) -> None:
        from vnet.serve.registry import FACTORIES

        started: list[Service] = []
        for factory in FACTORIES:
            try:
                service = factory(network, self.ctx)
                if service is None:
                    continue
                service.start()
            except VnetError as err:
                log.error("network %s: service not started: %s", network.name, err)
                continue
            started.append(service)
        self.services[network.name] = started

    def _stop_network(self, name: str) -> None:
        for service in reversed(self.services.pop(name, [])):
            try:
                service.stop()
            except Exception:
                log.exception("network %s: stopping %s failed", name, service.name)

    # ----- pid file -----

    def _lock_pidfile(self) -> None:
        run_dir = self.options.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / PID_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            other = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise ApiError(f"another vnet daemon (pid {other}) is running with {run_dir}") from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._pid_fd = fd

    def _unlock_pidfile(self) -> None:
        if self._pid_fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.options.run_dir / PID_NAME).unlink()
        os.close(self._pid_fd)
        self._pid_fd = None

    # ----- API operations -----

    def _api_status(self, _params: dict[str, Any]) -> Any:
        with self._lock:
            networks = {
                name: {s.name: s.stats() for s in services}
                for name, services in self.services.items()
            }
        return {"pid": os.getpid(), "uptime": time.time() - self.started, "networks": networks}

    def _api_leases(self, params: dict[str, Any]) -> Any:
        network = params.get("network")
        if network is not None and not isinstance(network, str):
            raise ApiError("leases: 'network' must be a string")
        records = store_for(self.options.state_dir).all_leases(network)
        return [_lease_json(asdict(r)) for r in records]

    def _api_reload(self, _params: dict[str, Any]) -> Any:
        self._reload = True
        self._poke()
        return "reload requested"


def _lease_json(record: dict[str, Any]) -> dict[str, Any]:
    record["ip"] = str(record["ip"])
    record["client"] = record["client"].hex()
    return record


def lease_rows(state_dir: Path, network: str | None) -> list[dict[str, Any]]:
    """Leases straight from the database (no daemon needed), as JSON-able dicts."""
    return [_lease_json(asdict(r)) for r in read_leases(state_dir / "leases.db", network)]


def run(options: DaemonOptions) -> int:
    return Daemon(options).run()
