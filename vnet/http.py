"""The daemon's local API transport: an HTTP/1.1 + JSON server on a unix socket, and its router.

For: ``Router`` maps ``METHOD /v1/path/{param}`` to ``handler(Request) -> Response``; ``HttpServer`` serves a
router on a unix socket with bounded threads, bounded reads and deadlines. The client is ``vnet.httpclient``
(kept apart so a hook process does not pay for threading, logging and selectors).
Must not: know any vnet operation (the caller registers routes), touch the host, or hand a worker a
connection that has not yet sent a whole request.

How it serves (what a client can rely on):
- One I/O thread reads every connection without blocking; a request reaches the worker pool (``workers``
  threads) only once its head and body are complete, so a silent or slow-dripping client costs a buffer,
  never a worker. At most ``max_connections`` are open and ``queue_size`` complete requests wait for a
  worker; beyond either the answer is 503 at once.
- A whole request (head and body) must arrive within ``read_timeout`` of the connection being accepted, or
  of the previous answer on a kept-alive connection: a deadline, not a per-recv timeout. Then a partial
  request gets 408; a connection that sent nothing is closed silently.
- Limits: head over ``max_header`` bytes -> 431; Content-Length over ``max_body`` -> 413 (the body is not
  read); any Transfer-Encoding (chunked) -> 411, send Content-Length instead; no Content-Length -> the body
  is empty (RFC 9112 section 6.3); ``Expect: 100-continue`` is answered. Bad request line or header -> 400,
  HTTP/2+ -> 505.
- Keep-alive: an HTTP/1.1 connection stays open until the client sends ``Connection: close`` (HTTP/1.0
  always closes). Answers the transport makes itself (400, 408, 411, 413, 431, 503, 505) always close.
- Errors are JSON ``{"error": TEXT, "detail": ANY}``: HttpError as raised; an exception that
  ``error_status`` maps (default: VnetError -> 400) as ``{"error": str(exc), "detail": null}``; unknown
  path 404, known path and wrong method 405 with ``Allow``; anything else 500 ``"internal error"`` (logged).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import queue
import re
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from vnet.errors import ApiError, VnetError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
PROMETHEUS_TYPE = "text/plain; version=0.0.4"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RECV = 65536


class HttpError(Exception):
    """Answer ``status`` with ``{"error": error, "detail": detail}``; raised by handlers and the transport."""

    def __init__(
        self, status: int, error: str, detail: object = None, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HttpError status must be 4xx or 5xx, not {status}")
        super().__init__(f"{status} {error}" if detail is None else f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


@dataclass(frozen=True)
class Request:
    """One parsed request. ``path`` is as sent (still percent-encoded, no query); ``params`` are decoded."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; ``{}`` for an empty body; HttpError 400 for anything else."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as err:
            raise HttpError(400, "request body is not JSON", str(err)) from err
        if not isinstance(value, dict):
            raise HttpError(400, "request body is not a JSON object", f"got a JSON {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Response:
    """What a handler returns. ``headers`` are extra ones; Content-Type/-Length/Connection are set here."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"response status must be 2xx..5xx, not {self.status}")
        if self.status == 204 and self.body:
            raise ValueError("a 204 response has no body")
        for name, value in (("Content-Type", self.content_type), *self.headers):
            if not _TOKEN.fullmatch(name) or _CTL.search(value.encode("latin-1")):
                raise ValueError(f"bad response header {name!r}: {value!r}")

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        return cls(status, json.dumps(obj).encode(), JSON_TYPE)

    @classmethod
    def text(cls, text: str, content_type: str = PROMETHEUS_TYPE, status: int = 200) -> Response:
        return cls(status, text.encode(), content_type)


Handler = Callable[[Request], Response]
ErrorStatus = Callable[[Exception], "int | None"]


def default_error_status(exc: Exception) -> int | None:
    """VnetError (a bad request the core refused) -> 400; anything else is not expected (None -> 500)."""
    return 400 if isinstance(exc, VnetError) else None


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    segments: tuple[tuple[bool, str], ...]  # (is a parameter, literal text or parameter name)
    handler: Handler

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for (is_param, text), value in zip(self.segments, segments, strict=True):
            if is_param:
                if not value:
                    return None
                params[text] = value
            elif text != value:
                return None
        return params


class Router:
    """Routes by method and path pattern; ``{name}`` matches one non-empty, percent-decoded segment."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``METHOD pattern``; the first registered match wins."""
        method = method.upper()
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"bad HTTP method {method!r}")
        if not pattern.startswith("/"):
            raise ValueError(f"route {pattern!r} does not start with /")
        segments: list[tuple[bool, str]] = []
        for text in pattern.split("/")[1:]:
            param = _PARAM.fullmatch(text)
            if param is not None:
                if any(is_param and name == param[1] for is_param, name in segments):
                    raise ValueError(f"route {pattern!r} names {{{param[1]}}} twice")
                segments.append((True, param[1]))
            elif "{" in text or "}" in text:
                raise ValueError(f"route {pattern!r}: bad segment {text!r}")
            else:
                segments.append((False, text))
        if any(r.method == method and r.pattern == pattern for r in self._routes):
            raise ValueError(f"route {method} {pattern} is registered twice")
        self._routes.append(_Route(method, pattern, tuple(segments), handler))

    def routes(self) -> tuple[tuple[str, str], ...]:
        """Every registered ``(METHOD, pattern)``, in registration order (read-only)."""
        return tuple((r.method, r.pattern) for r in self._routes)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters; HttpError 404 (no such path), 405 (other methods), 400."""
        segments = _decode_segments(path)
        allowed: set[str] = set()
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method:
                return route.handler, params
            allowed.add(route.method)
        if not allowed:
            raise HttpError(404, "not found", f"no such path: {path}")
        allow = ", ".join(sorted(allowed))
        raise HttpError(
            405, "method not allowed", f"{method} {path}: allowed {allow}", headers=(("Allow", allow),)
        )


def _decode_segments(path: str) -> list[str]:
    try:
        return [unquote_to_bytes(s).decode() for s in path.split("/")[1:]]
    except UnicodeDecodeError as err:
        raise HttpError(400, "bad request", f"path {path} is not UTF-8 once percent-decoded") from err


def _parse_query(query: str) -> dict[str, list[str]]:
    try:
        return parse_qs(query, keep_blank_values=True, errors="strict")
    except ValueError as err:
        raise HttpError(400, "bad request", f"query string is not UTF-8 once percent-decoded: {err}") from err


@dataclass(frozen=True)
class _Head:
    """A parsed request head: what the I/O thread needs to read the body, and the worker to route it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    length: int
    keep_alive: bool
    expect_continue: bool


def _bad(detail: str) -> HttpError:
    return HttpError(400, "bad request", detail)


def _parse_head(buf: bytearray, max_header: int, max_body: int) -> tuple[_Head, int] | None:
    """``(head, bytes it took)`` once ``buf`` holds a whole head, else None; HttpError for a bad one."""
    while buf and buf[0] in b"\r\n":  # RFC 9112 2.2: ignore empty lines before the request line
        del buf[:1]
    end = _HEAD_END.search(buf, 0, max_header + 4)
    if end is None:
        if len(buf) > max_header:
            raise HttpError(431, "request header too large", f"more than {max_header} bytes")
        return None
    if end.start() > max_header:
        raise HttpError(431, "request header too large", f"more than {max_header} bytes")
    lines = [line.rstrip(b"\r") for line in bytes(buf[: end.start()]).split(b"\n")]
    try:
        parts = lines[0].decode("ascii").split(" ")
    except UnicodeDecodeError as err:
        raise _bad("request line is not ASCII") from err
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise _bad(f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    ver = _VERSION.fullmatch(version)
    if ver is None:
        raise _bad(f"malformed HTTP version {version[:20]!r}")
    if ver[1] != "1":
        raise HttpError(505, "HTTP version not supported", f"{version}: this server speaks HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise _bad("obsolete header line folding")
        raw_name, colon, raw_value = line.partition(b":")
        name = raw_name.decode("latin-1")
        value = raw_value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or _CTL.search(value):
            raise _bad(f"malformed header line {line[:100]!r}")
        key = name.lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        raise HttpError(411, "length required", "chunked request bodies are not supported: send Content-Length")
    length = 0
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        raw = values.pop()
        if values or not raw.isascii() or not raw.isdigit():
            raise _bad(f"bad Content-Length {headers['content-length'][:40]!r}")
        length = int(raw) if len(raw) <= 18 else max_body + 1
        if length > max_body:
            raise HttpError(413, "request body too large", f"Content-Length {raw[:40]} is over {max_body} bytes")
    path, _, query = target.partition("?")
    keep_alive = ver[2] != "0" and "close" not in _tokens(headers.get("connection", ""))
    expect_continue = ver[2] != "0" and "100-continue" in _tokens(headers.get("expect", ""))
    return _Head(method, path, query, headers, length, keep_alive, expect_continue), end.end()


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def _error_response(err: HttpError) -> Response:
    body = json.dumps({"error": err.error, "detail": err.detail}, default=str).encode()
    return Response(err.status, body, JSON_TYPE, err.headers)


def _encode(response: Response, keep_alive: bool) -> bytes:
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    if response.status != 204:
        lines += [f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}"]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    lines += [f"{name}: {value}" for name, value in response.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class _Conn:
    """A client connection while the I/O thread reads its next request."""

    __slots__ = ("buf", "continued", "deadline", "head", "sock")

    def __init__(self, sock: socket.socket, buf: bytearray, deadline: float) -> None:
        self.sock = sock
        self.buf = buf
        self.deadline = deadline
        self.head: tuple[_Head, int] | None = None
        self.continued = False


_Job = tuple[_Conn, _Head, bytes]


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


class HttpServer:
    """Serves a Router on a unix socket: ``start()`` returns once listening, ``stop()`` removes the socket."""

    def __init__(
        self,
        path: Path,
        router: Router,
        *,
        workers: int = 8,
        read_timeout: float = 5.0,
        max_header: int = 16384,
        max_body: int = 1 << 20,
        mode: int = 0o660,
        group: str | None = "vnet",
        queue_size: int = 64,
        max_connections: int = 256,
        error_status: ErrorStatus = default_error_status,
    ) -> None:
        if workers < 1 or queue_size < 1 or max_connections < 1 or read_timeout <= 0:
            raise ValueError("workers, queue_size, max_connections and read_timeout must be positive")
        self.path = path
        self._router = router
        self._workers = workers
        self._read_timeout = read_timeout
        self._max_header = max_header
        self._max_body = max_body
        self._mode = mode
        self._group = group
        self._queue_size = queue_size
        self._max_connections = max_connections
        self._error_status = error_status
        self._jobs: queue.Queue[_Job | None] = queue.Queue()  # bounded by the I/O thread (its only producer)
        self._returns: queue.SimpleQueue[_Conn] = queue.SimpleQueue()  # kept-alive connections, back to I/O
        self._conns: dict[int, _Conn] = {}  # owned by the I/O thread
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._io: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (replacing a stale socket file), set mode and group, listen, start the threads."""
        if self._io is not None:
            raise RuntimeError(f"HTTP server on {self.path} is already started")
        self._clear_stale()
        listener = self._bind()
        self._stopping = threading.Event()  # fresh state: a stopped server can be started again
        self._jobs = queue.Queue()
        self._returns = queue.SimpleQueue()
        self._conns = {}
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._io = threading.Thread(target=self._io_loop, name="vnet-http-io", daemon=True)
        self._threads = [
            threading.Thread(target=self._work, name=f"vnet-http-{n}", daemon=True) for n in range(self._workers)
        ]
        self._io.start()
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let running handlers answer (bounded by ``timeout``), remove the socket file."""
        if self._io is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake()
        self._io.join(timeout)
        while True:  # requests that never reached a worker
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _refuse(job[0].sock, HttpError(503, "server stopping"))
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                self._returns.get_nowait().sock.close()
            except queue.Empty:
                break
        if not self._io.is_alive():
            for sock in (self._listener, self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            if self._selector is not None:
                self._selector.close()
        self._remove_socket_file()
        self._io = None
        self._threads = []

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ApiError(f"cannot listen on {self.path}: it exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                pass
            except OSError as err:
                raise ApiError(f"cannot listen on {self.path}: probing it failed: {err}") from err
            else:
                raise ApiError(f"cannot listen on {self.path}: another process is listening on it")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _bind(self) -> socket.socket:
        gid = _group_id(self._group)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
        except OSError as err:
            sock.close()
            raise ApiError(f"cannot listen on {self.path}: {err.strerror or err}") from err
        try:
            # before listen(), so nobody can connect while the mode is still the umask's
            os.chmod(self.path, self._mode)
            if gid is not None:
                os.chown(self.path, -1, gid)
            st = os.stat(self.path)
            sock.listen(128)
        except OSError as err:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            raise ApiError(f"cannot set up {self.path} (mode {self._mode:o}, group {self._group}): {err}") from err
        sock.setblocking(False)
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_socket_file(self) -> None:
        """Unlink the socket only if it is still the one this server bound (not a successor's)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending; closed: stopped
                self._wake_w.send(b"\0")

    # -- the I/O thread: accepts, reads whole requests, enforces limits and deadlines ------------------

    def _io_loop(self) -> None:
        assert self._selector is not None
        assert self._wake_r is not None
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._expire()):
                    if key.data is None:
                        self._accept_ready()
                    elif key.data is self._wake_r:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(_RECV):
                                pass
                        self._take_returns()
                    else:
                        conn = self._conns.get(key.fd)
                        if conn is not None and conn is key.data:  # not dropped earlier in this round
                            self._read_ready(conn)
        except Exception:
            log.exception("HTTP server on %s: I/O thread failed", self.path)
        finally:
            for conn in list(self._conns.values()):
                self._unwatch(conn)
                conn.sock.close()

    def _expire(self) -> float | None:
        """Cut connections past their deadline; seconds until the next one (None: no connection)."""
        now = time.monotonic()
        nearest: float | None = None
        for conn in list(self._conns.values()):
            left = conn.deadline - now
            if left > 0:
                nearest = left if nearest is None else min(nearest, left)
                continue
            self._unwatch(conn)
            if conn.buf or conn.head is not None:
                err = HttpError(408, "request timeout", f"no whole request within {self._read_timeout:g} s")
                _refuse(conn.sock, err)
            else:
                conn.sock.close()
        return nearest

    def _accept_ready(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                log.warning("HTTP server on %s: accept failed: %s", self.path, err)
                return
            if len(self._conns) >= self._max_connections:
                log.warning("HTTP server on %s: refused a connection, %d open", self.path, len(self._conns))
                _refuse(sock, HttpError(503, "server busy", f"{self._max_connections} connections are open"))
                continue
            sock.setblocking(False)
            self._watch(_Conn(sock, bytearray(), time.monotonic() + self._read_timeout))

    def _take_returns(self) -> None:
        while True:
            try:
                conn = self._returns.get_nowait()
            except queue.Empty:
                return
            conn.sock.setblocking(False)
            self._watch(conn)

    def _watch(self, conn: _Conn) -> None:
        assert self._selector is not None
        self._conns[conn.sock.fileno()] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        if conn.buf:  # a pipelined request came with the previous one
            self._advance(conn)

    def _unwatch(self, conn: _Conn) -> None:
        assert self._selector is not None
        self._selector.unregister(conn.sock)
        del self._conns[conn.sock.fileno()]

    def _read_ready(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away, possibly mid-request: nobody to answer
            self._unwatch(conn)
            conn.sock.close()
            return
        conn.buf += chunk
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Hand the connection to the workers once it holds a whole request; refuse a bad one."""
        try:
            if conn.head is None:
                conn.head = _parse_head(conn.buf, self._max_header, self._max_body)
                if conn.head is None:
                    return
        except HttpError as err:
            self._unwatch(conn)
            _refuse(conn.sock, err)
            return
        head, start = conn.head
        if len(conn.buf) - start < head.length:
            if head.expect_continue and not conn.continued:
                conn.continued = True
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        body = bytes(conn.buf[start : start + head.length])
        del conn.buf[: start + head.length]
        conn.head = None
        conn.continued = False
        self._unwatch(conn)
        if self._jobs.qsize() >= self._queue_size:
            log.warning("HTTP server on %s: refused %s %s, %d requests wait", self.path, head.method, head.path,
                        self._queue_size)
            _refuse(conn.sock, HttpError(503, "server busy", f"{self._queue_size} requests wait for a worker"))
            return
        self._jobs.put((conn, head, body))

    # -- workers: route, call the handler, write the answer --------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, head, body = job
            try:
                self._serve(conn, head, body)
            except Exception:
                log.exception("HTTP server on %s: serving %s %s failed", self.path, head.method, head.path)
                conn.sock.close()

    def _serve(self, conn: _Conn, head: _Head, body: bytes) -> None:
        response = self._respond(head, body)
        log.debug("%s %s -> %d", head.method, head.path, response.status)
        keep_alive = head.keep_alive and not self._stopping.is_set()
        conn.sock.settimeout(self._read_timeout)  # sendall: a total bound on writing the answer
        try:
            conn.sock.sendall(_encode(response, keep_alive))
        except OSError:
            keep_alive = False
        if not keep_alive:
            conn.sock.close()
            return
        conn.deadline = time.monotonic() + self._read_timeout
        self._returns.put(conn)
        self._wake()

    def _respond(self, head: _Head, body: bytes) -> Response:
        try:
            handler, params = self._router.resolve(head.method, head.path)
            request = Request(head.method, head.path, params, _parse_query(head.query), head.headers, body)
            response = handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"the handler returned a {type(response).__name__}, not a Response")
            return response
        except HttpError as err:
            return _error_response(err)
        except Exception as err:
            status = self._error_status(err)
            if status is not None and 400 <= status <= 599:
                return _error_response(HttpError(status, str(err) or type(err).__name__))
            log.exception("%s %s failed", head.method, head.path)
            return _error_response(HttpError(500, "internal error", str(err) or type(err).__name__))


def _refuse(sock: socket.socket, err: HttpError) -> None:
    """Answer a transport-level error without blocking, then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_encode(_error_response(err), keep_alive=False))
        # Read (a bounded amount of) what the client already sent: closing a unix socket with unread
        # data makes the peer's next read fail with ECONNRESET, maybe before it has read this answer.
        for _ in range(16):
            if not sock.recv(_RECV):
                break
    sock.close()
