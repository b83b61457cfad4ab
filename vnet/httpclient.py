"""Client of the daemon's local HTTP API (``vnet.http``): one request per connection on a unix socket.

For: the CLI and the QEMU/libvirt hooks. A hook process imports this module, so it imports only cheap
stdlib (socket, json, time, contextlib) and ``vnet.errors``: http.client alone would add ~12 ms per hook call.
Must not: import vnet.http or any heavy module, retry, or interpret results beyond status and JSON.
Every failure is an ApiError whose message names the socket; ``timeout`` bounds the whole exchange.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from vnet.errors import ApiError

if TYPE_CHECKING:
    from pathlib import Path

MAX_RESPONSE = 64 << 20
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class _BadReply(Exception):
    """The daemon's answer is not the HTTP this client understands."""


def quote(segment: str) -> str:
    """Percent-encode one path segment (``/`` too), like ``urllib.parse.quote(segment, safe="")``."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in segment.encode())


def request(
    sock_path: Path, method: str, path: str, body: object | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """``(status, parsed JSON)`` (None for an empty body), or ``(status, text)`` for other content types.

    ``path`` is sent as given: percent-encode parameters with ``quote``.
    """
    status, content_type, data = _exchange(sock_path, method, path, body, timeout)
    if content_type == "application/json":
        return status, _parse_json(sock_path, method, path, data)
    return status, data.decode(errors="replace")


def call_json(sock_path: Path, method: str, path: str, body: object | None = None, timeout: float = 10.0) -> Any:
    """The JSON answer of a successful request; ApiError ``"ERROR: DETAIL"`` for a status >= 400."""
    status, content_type, data = _exchange(sock_path, method, path, body, timeout)
    reply = _parse_json(sock_path, method, path, data) if content_type == "application/json" else None
    if status >= 400:
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            detail = reply.get("detail")
            if detail is None or detail == "":
                raise ApiError(reply["error"])
            text = detail if isinstance(detail, str) else json.dumps(detail)
            raise ApiError(f"{reply['error']}: {text}")
        snippet = " ".join(data.decode(errors="replace").split())[:200]
        raise ApiError(f"vnet daemon at {sock_path}: {method} {path}: HTTP {status} {snippet}".rstrip())
    if content_type != "application/json" and data:
        raise ApiError(f"vnet daemon at {sock_path}: {method} {path} answered {content_type or 'no body'}, not JSON")
    return reply


def _parse_json(sock_path: Path, method: str, path: str, data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as err:
        raise ApiError(f"vnet daemon at {sock_path} sent bad JSON for {method} {path}: {err}") from err


def _exchange(
    sock_path: Path, method: str, path: str, body: object | None, timeout: float
) -> tuple[int, str, bytes]:
    """Send one request; ``(status, media type lower-cased without parameters, body)``."""
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise ValueError(f"bad HTTP method {method!r}")
    if not path.startswith("/") or not all(0x21 <= ord(c) <= 0x7E for c in path):
        raise ValueError(f"bad request path {path!r}: percent-encode it (httpclient.quote)")
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: vnet\r\nUser-Agent: vnet\r\nAccept: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(payload)}\r\n"
    )
    if body is not None:
        head += "Content-Type: application/json\r\n"
    deadline = time.monotonic() + timeout
    where = f"vnet daemon at {sock_path}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise ApiError(f"no vnet daemon is listening on {sock_path} (start it with `vnet daemon`)") from err
        except PermissionError as err:
            raise ApiError(f"permission denied on {sock_path}: the API is for root and the socket's group") from err
        except TimeoutError as err:
            raise ApiError(f"{where} did not accept a connection within {timeout:g} s") from err
        except OSError as err:
            raise ApiError(f"cannot reach the {where}: {err.strerror or err}") from err
        try:
            # it may answer (413, 503) and close before reading all of it: then read that answer
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head.encode() + b"\r\n" + payload)
            return _read_response(sock, deadline)
        except TimeoutError as err:
            raise ApiError(f"{where} did not answer {method} {path} within {timeout:g} s") from err
        except (OSError, _BadReply) as err:
            raise ApiError(f"{where}: {method} {path} failed: {err}") from err


def _recv(sock: socket.socket, buf: bytearray, deadline: float) -> bool:
    """Append what arrives before ``deadline`` to ``buf``; False at end of stream."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    chunk = sock.recv(65536)
    buf += chunk
    if len(buf) > MAX_RESPONSE:
        raise _BadReply(f"answer larger than {MAX_RESPONSE} bytes")
    return bool(chunk)


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, str, bytes]:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if not _recv(sock, buf, deadline):
                raise _BadReply("the connection closed before an answer" if not buf else "truncated answer head")
            continue
        status, headers = _parse_head(bytes(buf[:end]))
        del buf[: end + 4]
        if status >= 200:
            break  # 1xx (100 Continue) are interim: the real answer follows
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if status in (204, 304):
        return status, content_type, b""
    length = headers.get("content-length")
    if length is None:
        while _recv(sock, buf, deadline):
            pass
        return status, content_type, bytes(buf)
    if not length.isascii() or not length.isdigit() or int(length) > MAX_RESPONSE:
        raise _BadReply(f"bad Content-Length {length[:40]!r}")
    while len(buf) < int(length):
        if not _recv(sock, buf, deadline):
            raise _BadReply(f"answer body truncated at {len(buf)} of {length} bytes")
    return status, content_type, bytes(buf[: int(length)])


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise _BadReply(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadReply(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
