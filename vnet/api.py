"""Where the daemon's API lives and how the CLI calls it: HTTP/1.1 + JSON on a unix socket.

The socket is ``RUN_DIR/vnet.sock`` (mode 0660, group ``vnet`` when that group exists); the
routes are in ``vnet.routes`` and ``docs/openapi.yaml``; the wire is ``vnet.http`` (server)
and ``vnet.httpclient`` (client). Usable with curl:
``curl --unix-socket /run/vnet/vnet.sock http://vnet/v1/status``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vnet.httpclient import call_json, quote

SOCKET_NAME = "vnet.sock"

__all__ = ["SOCKET_NAME", "call", "quote", "socket_path"]


def socket_path(run_dir: Path) -> Path:
    return run_dir / SOCKET_NAME


def call(run_dir: Path, method: str, path: str, body: object | None = None,
         timeout: float = 10.0) -> Any:
    """The JSON answer of ``METHOD PATH``; ApiError naming the problem (or the socket)."""
    return call_json(socket_path(run_dir), method, path, body, timeout)
