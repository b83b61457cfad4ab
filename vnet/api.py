"""The daemon's local API: JSON over a unix socket (``RUN_DIR/vnet.sock``), server and client.

One request per connection: the client sends one JSON object ``{"op": NAME, ...params}`` and a
newline; the server answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``
and closes. Operations are registered by name (``ApiServer.register``), so later features add
theirs without touching this module. The socket is mode 0660: root (and the socket's group).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vnet.errors import ApiError, VnetError

log = logging.getLogger(__name__)

SOCKET_NAME = "vnet.sock"
MAX_REQUEST = 1 << 20
Handler = Callable[[dict[str, Any]], Any]


def socket_path(run_dir: Path) -> Path:
    return run_dir / SOCKET_NAME


class ApiServer:
    """Serves registered operations on a unix socket, one thread per connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handlers: dict[str, Handler] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def register(self, op: str, handler: Handler) -> None:
        """``handler(params) -> JSON-able result``; it raises VnetError for a bad request."""
        self._handlers[op] = handler

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
            sock.listen(64)
        except OSError as err:
            sock.close()
            raise ApiError(f"cannot listen on {self.path}: {err}") from err
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="vnet-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = _read_line(conn)
                reply = self.dispatch(data)
            except (OSError, ApiError) as err:
                reply = {"ok": False, "error": str(err)}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def dispatch(self, data: bytes) -> dict[str, Any]:
        """One raw request -> the response object."""
        try:
            request = json.loads(data)
        except ValueError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'request must be an object with a string "op"'}
        op = request.pop("op")
        handler = self._handlers.get(op)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"ok": False, "error": f"unknown operation {op!r} (known: {known})"}
        try:
            return {"ok": True, "result": handler(request)}
        except VnetError as err:
            return {"ok": False, "error": str(err)}
        except Exception as err:
            log.exception("API operation %s failed", op)
            return {"ok": False, "error": f"{op} failed: {err}"}


def _read_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ApiError(f"request larger than {MAX_REQUEST} bytes")
    return bytes(buf).split(b"\n", 1)[0]


def call(run_dir: Path, op: str, timeout: float = 10.0, **params: Any) -> Any:
    """Ask the daemon; returns the result or raises ApiError (also when it is not running)."""
    path = socket_path(run_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as err:
            raise ApiError(f"cannot reach the vnet daemon at {path}: {err.strerror}") from err
        try:
            sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            data = _read_line(sock)
        except OSError as err:
            raise ApiError(f"vnet daemon at {path}: {op} failed: {err}") from err
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError as err:
        raise ApiError(f"vnet daemon at {path} sent a bad reply to {op}") from err
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise ApiError(f"{op}: {error}")
    return reply.get("result")
