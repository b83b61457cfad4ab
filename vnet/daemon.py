"""``vnet daemon``: the controller process. Load, apply, serve the network services and the API.

Foreground process. Start: lock and write ``RUN_DIR/vnet.pid`` (a second daemon on the same run
dir is refused), then ``vnet.controller.Controller.start`` (load the files and attachments,
apply, start every service of ``vnet.serve.registry`` per network), then the HTTP API on
``RUN_DIR/vnet.sock`` (``vnet.routes``), then tell systemd READY=1 (``Type=notify``). Every
change after that is an intent for the controller's one worker: SIGHUP and ``POST /v1/reload``
reload the files (a bad file keeps the running model), API calls and hooks attach and detach
guests, a periodic check repairs drift. SIGTERM/SIGINT: STOPPING=1, stop the API and the
services (they drain: pending lease commits are flushed); the data plane (links, rules) stays,
so a restart adopts it without churn.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from vnet import api
from vnet.controller import Controller, ControllerOptions
from vnet.errors import ApiError
from vnet.events import EventBus
from vnet.leases import close_store, store_for
from vnet.serve import ServiceContext

if TYPE_CHECKING:
    from vnet.linkwatch import LinkWatch

log = logging.getLogger(__name__)

PID_NAME = "vnet.pid"


@dataclass(frozen=True)
class DaemonOptions:
    config_dir: Path
    state_dir: Path
    run_dir: Path
    policy_dir: Path | None = None
    apply_l2: bool = True


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's ``NOTIFY_SOCKET`` (if set); True when sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as err:
            log.warning("cannot notify systemd on %s: %s", path, err)
            return False
    return True


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        from vnet.http import HttpServer
        from vnet.libvirt import LibvirtHooks
        from vnet.routes import Api, error_status

        self.options = options
        self.events = EventBus()
        self.ctx = ServiceContext(options.state_dir, options.run_dir, self.events)
        self.started = time.time()
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(
            ControllerOptions(options.config_dir, options.state_dir, options.run_dir,
                              options.policy_dir, options.apply_l2), self.ctx)
        # Self-pipe: signals (through set_wakeup_fd) wake the main loop. A signal handler must
        # never take a lock the interrupted main thread may hold (Event.set() from a handler
        # deadlocked against Event.wait() in the main thread).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._reload = False
        self._pid_fd: int | None = None
        self.linkwatch: LinkWatch | None = None
        routes = Api(self.controller, options.state_dir, self.started,
                     hooks=LibvirtHooks(self.controller).handle)
        # Bodies up to 8 MiB: a libvirt hook forwards the domain XML (at most 4 MiB).
        self.api = HttpServer(api.socket_path(options.run_dir), routes.router(),
                              error_status=error_status, max_body=8 << 20)

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
            model, _ = self.controller.snapshot()
            log.info("vnet daemon running (pid %d, %d networks)", os.getpid(),
                     len(model.networks))
            sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving "
                      f"{len(model.networks)} networks")
            while True:
                select.select([self._wake_r], [], [])
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(512):
                        pass
                if self._stop:
                    break
                if self._reload:
                    self._reload = False
                    self.controller.post("reload")
        finally:
            sd_notify("STOPPING=1")
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Flags only: the wakeup fd has already woken the main loop.
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def start(self) -> None:
        store_for(self.options.state_dir)
        if self.options.apply_l2:
            from vnet.linkwatch import LinkWatch

            # Subscribed before the first apply: nothing that happens after it is missed.
            self.linkwatch = LinkWatch(self.controller)
        self.controller.start()
        if self.linkwatch is not None:
            self.linkwatch.start()
        # What start built (modules, the model, compiled rules) lives as long as the daemon:
        # keep it out of the cyclic collector, whose full passes over it cost guest changes
        # up to ~0.1 s at 1,000 guests.
        gc.freeze()
        self.api.start()

    def reload(self) -> None:
        """Re-read the files (through the controller's worker); waits for the outcome."""
        self.controller.submit("reload", timeout=120.0)

    def shutdown(self) -> None:
        self.api.stop()
        if self.linkwatch is not None:
            self.linkwatch.stop()
        self.controller.stop()
        close_store(self.options.state_dir)
        self._unlock_pidfile()
        log.info("vnet daemon stopped")

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


def run(options: DaemonOptions) -> int:
    return Daemon(options).run()
