"""The local API transport (vnet.http server, vnet.httpclient client) on real unix sockets, no root needed:
routing, error bodies, limits, deadlines against silent and slow clients, 503 when full, keep-alive, curl."""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import re
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vnet.errors import ApiError, ConflictError
from vnet.http import HttpError, HttpServer, Request, Response, Router
from vnet.httpclient import call_json, quote, request

WAIT = 3.0  # bound on every wait for the server; the tests finish far sooner unless something is wrong


class Raw:
    """A hand-driven client connection: send any bytes, read one response at a time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before a response; got {bytes(self.buf)!r}"
            self.buf += chunk
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        self.buf = bytearray(rest)
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed inside a response body"
            self.buf += chunk
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return status, headers, body

    def at_eof(self) -> bool:
        return not self.buf and self.sock.recv(1) == b""


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: vnet\r\n\r\n".encode()


def make_router() -> Router:
    router = Router()
    router.add("GET", "/v1/status", lambda r: Response.json({"ok": True}))
    router.add("GET", "/v1/networks/{network}/guests/{guest}",
               lambda r: Response.json({"params": r.params, "query": r.query}))
    router.add("PUT", "/v1/networks/{network}/guests/{guest}", lambda r: Response.json({"got": r.json()}))
    router.add("POST", "/v1/echo", lambda r: Response.json({"body": r.json(), "x-test": r.headers.get("x-test")}))
    router.add("GET", "/metrics", lambda r: Response.text("vnet_up 1\n"))
    router.add("DELETE", "/v1/thing", lambda r: Response(204))

    def boom(_: Request) -> Response:
        raise RuntimeError("boom")

    def conflict(_: Request) -> Response:
        raise HttpError(409, "conflict", {"guest": "web"})

    def refused(_: Request) -> Response:
        raise ApiError("guest 'web' is not attached to 'lab'")

    def taken(_: Request) -> Response:
        raise ConflictError("cannot add bridge 'vn-lab': exists and is a bond")

    router.add("GET", "/v1/boom", boom)
    router.add("GET", "/v1/conflict", conflict)
    router.add("GET", "/v1/refused", refused)
    router.add("GET", "/v1/taken", taken)
    return router


@contextlib.contextmanager
def serving(path: Path, router: Router | None = None, **options: Any) -> Iterator[HttpServer]:
    options.setdefault("group", None)
    options.setdefault("workers", 2)
    options.setdefault("read_timeout", 1.0)
    server = HttpServer(path, router or make_router(), **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "vnet.sock"


@pytest.fixture
def server(sock: Path) -> Iterator[Path]:
    with serving(sock):
        yield sock


class Blocker:
    """A handler that holds its worker until released, so a test controls when workers are busy."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, _: Request) -> Response:
        self.entered.set()
        self.release.wait(WAIT)
        return Response.json({"released": True})


# -- routing and error bodies ---------------------------------------------------------------------------


def test_routes_with_percent_decoded_params_and_query(server: Path) -> None:
    path = "/v1/networks/lab/guests/" + quote("web/1 é") + "?x=1&x=2&y="
    assert request(server, "GET", path) == (
        200, {"params": {"network": "lab", "guest": "web/1 é"}, "query": {"x": ["1", "2"], "y": [""]}}
    )
    assert request(server, "GET", "/v1/st%61tus") == (200, {"ok": True})
    assert quote("web/1 é") == urllib.parse.quote("web/1 é", safe="")


@pytest.mark.parametrize("path", ["/v1/networks//guests/web", "/v1/status/", "/v1", "/v1/networks/lab/guests"])
def test_unknown_path_is_404_naming_it(server: Path, path: str) -> None:
    assert request(server, "GET", path) == (404, {"error": "not found", "detail": f"no such path: {path}"})


def test_wrong_method_is_405_with_allow(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(b"DELETE /v1/networks/lab/guests/web HTTP/1.1\r\nHost: vnet\r\n\r\n")
        status, headers, body = raw.response()
    assert status == 405
    assert headers["allow"] == "GET, PUT"
    assert json.loads(body) == {
        "error": "method not allowed", "detail": "DELETE /v1/networks/lab/guests/web: allowed GET, PUT"
    }


def test_request_json_body_and_lower_cased_headers(server: Path) -> None:
    with Raw(server) as raw:
        body = b'{"a": [1, 2]}'
        raw.send(b"POST /v1/echo HTTP/1.1\r\nX-Test: Yes\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        status, headers, reply = raw.response()
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(reply) == {"body": {"a": [1, 2]}, "x-test": "Yes"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, (200, {"got": {}})),
        ({"mac": "52:54:00:00:00:01"}, (200, {"got": {"mac": "52:54:00:00:00:01"}})),
        ([1], (400, {"error": "request body is not a JSON object", "detail": "got a JSON list"})),
    ],
)
def test_request_json(server: Path, body: object, expected: tuple[int, Any]) -> None:
    assert request(server, "PUT", "/v1/networks/lab/guests/web", body) == expected


def test_request_body_that_is_not_json_is_400(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(b"PUT /v1/networks/lab/guests/web HTTP/1.1\r\nContent-Length: 4\r\n\r\nnope")
        status, _, body = raw.response()
    assert status == 400
    assert json.loads(body)["error"] == "request body is not JSON"


def test_http_error_passes_through(server: Path) -> None:
    assert request(server, "GET", "/v1/conflict") == (409, {"error": "conflict", "detail": {"guest": "web"}})


def test_vnet_error_is_400_with_its_message(server: Path) -> None:
    assert request(server, "GET", "/v1/refused") == (
        400, {"error": "guest 'web' is not attached to 'lab'", "detail": None}
    )


def test_error_status_maps_exceptions(sock: Path) -> None:
    def status(exc: Exception) -> int | None:
        return 409 if isinstance(exc, ConflictError) else None

    with serving(sock, error_status=status):
        assert request(sock, "GET", "/v1/taken") == (
            409, {"error": "cannot add bridge 'vn-lab': exists and is a bond", "detail": None}
        )
        assert request(sock, "GET", "/v1/refused")[0] == 500  # not mapped by this function


def test_handler_crash_is_500_and_logged(server: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="vnet.http"):
        assert request(server, "GET", "/v1/boom") == (500, {"error": "internal error", "detail": "boom"})
    [record] = [r for r in caplog.records if r.name == "vnet.http"]
    assert record.exc_info is not None
    assert "GET /v1/boom" in record.getMessage()


def test_text_and_empty_responses(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(get("/metrics"))
        status, headers, body = raw.response()
        assert (status, headers["content-type"], body) == (200, "text/plain; version=0.0.4", b"vnet_up 1\n")
        raw.send(b"DELETE /v1/thing HTTP/1.1\r\n\r\n")
        status, headers, body = raw.response()
        assert (status, body, "content-length" in headers) == (204, b"", False)


def test_router_refuses_bad_and_duplicate_routes() -> None:
    router = Router()
    router.add("get", "/v1/a/{x}", lambda r: Response(204))
    for method, pattern in [("GET", "/v1/a/{x}"), ("GET", "v1/b"), ("GET", "/v1/{x}/{x}"), ("GET", "/v1/{x-y}"),
                            ("G T", "/v1/c")]:
        with pytest.raises(ValueError, match=r"route|method"):
            router.add(method, pattern, lambda r: Response(204))
    assert router.resolve("GET", "/v1/a/b")[1] == {"x": "b"}


# -- the transport's own refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /v1/status\r\n\r\n", 400),
        (b"GET v1/status HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1 extra\r\n\r\n", 400),
        (b"\xff\xfe /v1/status HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/status HTTX/1.1\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"GET /v1/status HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_malformed_requests_get_a_json_error_and_close(server: Path, data: bytes, status: int) -> None:
    with Raw(server) as raw:
        raw.send(data)
        got, headers, body = raw.response()
        assert (got, headers["connection"]) == (status, "close")
        assert set(json.loads(body)) == {"error", "detail"}
        assert raw.at_eof()


def test_path_that_is_not_utf8_is_400(server: Path) -> None:
    assert request(server, "GET", "/v1/networks/%ff/guests/web")[0] == 400
    assert request(server, "GET", "/v1/status?x=%ff")[0] == 400


def test_body_over_the_limit_is_413_unread(sock: Path) -> None:
    with serving(sock, max_body=100), Raw(sock) as raw:
        raw.send(b"POST /v1/echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
        status, _, body = raw.response()
        assert (status, json.loads(body)) == (
            413, {"error": "request body too large", "detail": "Content-Length 101 is over 100 bytes"}
        )
        assert raw.at_eof()


def test_huge_body_from_the_client_gets_the_413(sock: Path) -> None:
    with serving(sock, max_body=100), pytest.raises(ApiError, match=r"^request body too large: Content-Length"):
        call_json(sock, "POST", "/v1/echo", {"blob": "x" * (4 << 20)})


@pytest.mark.parametrize("terminated", [True, False])
def test_head_over_the_limit_is_431(sock: Path, terminated: bool) -> None:
    with serving(sock, max_header=1024), Raw(sock) as raw:
        raw.send(b"GET /v1/status HTTP/1.1\r\nX-Big: " + b"a" * 1100 + (b"\r\n\r\n" if terminated else b""))
        status, _, body = raw.response()
        assert (status, json.loads(body)["error"]) == (431, "request header too large")


def test_expect_100_continue(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(b"POST /v1/echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n")
        assert raw.response()[0] == 100
        raw.send(b'{"a":1}')
        status, _, body = raw.response()
        assert (status, json.loads(body)["body"]) == (200, {"a": 1})


# -- keep-alive -----------------------------------------------------------------------------------------


def test_keep_alive_pipelining_and_connection_close(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(b"\r\n" + get("/v1/status") + get("/metrics"))  # a stray CRLF before a request is ignored
        first, second = raw.response(), raw.response()
        assert (first[0], first[1]["connection"], json.loads(first[2])) == (200, "keep-alive", {"ok": True})
        assert (second[0], second[2]) == (200, b"vnet_up 1\n")
        raw.send(b"GET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = raw.response()
        assert (status, headers["connection"]) == (200, "close")
        assert raw.at_eof()


def test_http_1_0_closes(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(b"GET /v1/status HTTP/1.0\r\n\r\n")
        assert raw.response()[1]["connection"] == "close"
        assert raw.at_eof()


def test_idle_keep_alive_connection_is_closed_at_the_deadline(server: Path) -> None:
    with Raw(server) as raw:
        raw.send(get("/v1/status"))
        assert raw.response()[0] == 200
        start = time.monotonic()
        assert raw.at_eof()  # silently: it sent nothing since
        assert 0.5 < time.monotonic() - start < 2.5


# -- stalled clients, bounded pool, 503 ------------------------------------------------------------------


def test_silent_and_dripping_clients_do_not_block_others(sock: Path) -> None:
    with serving(sock, workers=2, read_timeout=1.0), contextlib.ExitStack() as stack:
        silent = [stack.enter_context(Raw(sock)) for _ in range(3)]
        drip = stack.enter_context(Raw(sock))
        dripping, stop = threading.Event(), threading.Event()

        def dripper() -> None:
            for byte in get("/v1/status"):
                try:
                    drip.send(bytes([byte]))
                except OSError:
                    return  # cut off by the server, as expected
                dripping.set()
                if stop.wait(0.2):  # the deliberate drip
                    return

        thread = threading.Thread(target=dripper)
        thread.start()
        stack.callback(thread.join, WAIT)
        stack.callback(stop.set)
        assert dripping.wait(WAIT)
        opened = time.monotonic()

        assert request(sock, "GET", "/v1/status", timeout=WAIT) == (200, {"ok": True})
        assert time.monotonic() - opened < 1.0
        for raw in silent:  # still open (nothing sent to them, no EOF): the normal client did not wait them out
            raw.sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                raw.sock.recv(1)
            raw.sock.settimeout(WAIT)

        status, headers, body = drip.response()  # a deadline for the whole request, not a per-recv timeout
        assert (status, headers["connection"], json.loads(body)["error"]) == (408, "close", "request timeout")
        assert time.monotonic() - opened < 2.0
        for raw in silent:
            assert raw.at_eof()


def test_full_queue_answers_503(sock: Path) -> None:
    router = make_router()
    blocker = Blocker()
    router.add("GET", "/v1/block", blocker)
    with serving(sock, router, workers=1, queue_size=1), Raw(sock) as busy, Raw(sock) as a, Raw(sock) as b:
        try:
            busy.send(get("/v1/block"))
            assert blocker.entered.wait(WAIT)  # the only worker is busy
            a.send(get("/v1/status"))
            b.send(get("/v1/status"))  # one of a, b waits in the queue (size 1); the other is refused
            readable, _, _ = select.select([a.sock, b.sock], [], [], WAIT)
            assert len(readable) == 1
            refused, queued = (a, b) if readable == [a.sock] else (b, a)
            status, headers, body = refused.response()
            assert (status, headers["connection"], json.loads(body)["error"]) == (503, "close", "server busy")
        finally:
            blocker.release.set()
        assert busy.response()[0] == 200
        assert queued.response()[0] == 200


def test_too_many_connections_answers_503(sock: Path) -> None:
    with serving(sock, max_connections=2), Raw(sock), Raw(sock), Raw(sock) as third:
        status, _, body = third.response()
        assert (status, json.loads(body)) == (503, {"error": "server busy", "detail": "2 connections are open"})
        assert third.at_eof()


def test_many_concurrent_clients_are_all_served(sock: Path) -> None:
    results: list[tuple[int, Any]] = []

    def client() -> None:
        results.extend(request(sock, "GET", "/v1/status", timeout=WAIT) for _ in range(5))

    with serving(sock, workers=2):
        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
    assert results == [(200, {"ok": True})] * 80


# -- curl --------------------------------------------------------------------------------------------------


def curl(sock: Path, *args: str) -> tuple[str, int]:
    proc = subprocess.run(
        ["curl", "-s", "--max-time", "5", "--unix-socket", str(sock), "-w", "\n%{http_code}", *args],
        capture_output=True, text=True, timeout=10, check=True,
    )
    body, _, code = proc.stdout.rpartition("\n")
    return body, int(code)


def test_curl(server: Path) -> None:
    body, code = curl(server, "http://vnet/v1/status")
    assert (code, json.loads(body)) == (200, {"ok": True})
    body, code = curl(server, "http://vnet/v1/nope")
    assert (code, json.loads(body)) == (404, {"error": "not found", "detail": "no such path: /v1/nope"})
    blob = "x" * 5000
    body, code = curl(server, "-H", "Content-Type: application/json", "-d", json.dumps({"blob": blob}),
                      "http://vnet/v1/echo")
    assert (code, json.loads(body)["body"]) == (200, {"blob": blob})
    proc = subprocess.run(
        ["curl", "-sv", "--max-time", "5", "--unix-socket", str(server), "http://vnet/v1/status", "http://vnet/metrics"],
        capture_output=True, text=True, timeout=10, check=True,
    )
    assert proc.stdout == '{"ok": true}vnet_up 1\n'
    assert "Re-using existing connection" in proc.stderr  # kept alive


# -- client ------------------------------------------------------------------------------------------------


def test_call_json(server: Path) -> None:
    assert call_json(server, "GET", "/v1/status") == {"ok": True}
    assert call_json(server, "DELETE", "/v1/thing") is None
    assert request(server, "GET", "/metrics") == (200, "vnet_up 1\n")
    with pytest.raises(ApiError, match=r"^not found: no such path: /v1/nope$"):
        call_json(server, "GET", "/v1/nope")
    with pytest.raises(ApiError, match=r"^guest 'web' is not attached to 'lab'$"):
        call_json(server, "GET", "/v1/refused")
    with pytest.raises(ApiError, match=r'^conflict: \{"guest": "web"\}$'):
        call_json(server, "GET", "/v1/conflict")
    with pytest.raises(ApiError, match="answered text/plain, not JSON"):
        call_json(server, "GET", "/metrics")


def test_client_names_the_socket_when_nothing_listens(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # a socket file nobody listens on: ECONNREFUSED
    for path in (missing, stale):
        message = f"no vnet daemon is listening on {path} (start it with `vnet daemon`)"
        with pytest.raises(ApiError) as err:
            call_json(path, "GET", "/v1/status")
        assert str(err.value) == message


def test_client_timeout_bounds_the_exchange(sock: Path) -> None:
    router = make_router()
    blocker = Blocker()
    router.add("GET", "/v1/block", blocker)
    with serving(sock, router):
        started = time.monotonic()
        try:
            message = f"vnet daemon at {sock} did not answer GET /v1/block within 0.3 s"
            with pytest.raises(ApiError, match=f"^{re.escape(message)}$"):
                request(sock, "GET", "/v1/block", timeout=0.3)
        finally:
            blocker.release.set()
        assert time.monotonic() - started < 2.0


def test_client_imports_only_cheap_modules() -> None:
    code = "import sys, vnet.httpclient; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=30).stdout.split())
    assert {"vnet.httpclient", "json"} <= loaded
    assert loaded.isdisjoint({"vnet.http", "http.client", "threading", "logging", "queue", "email"})


# -- the socket file -------------------------------------------------------------------------------------


def test_socket_mode_and_removal(sock: Path) -> None:
    with serving(sock):
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o660
    assert not sock.exists()


def test_socket_group(sock: Path) -> None:
    try:
        group = grp.getgrgid(os.getegid() if os.geteuid() != 0 else 1)
    except KeyError:
        pytest.skip("no group to hand the socket to")
    with serving(sock, group=group.gr_name):
        assert os.lstat(sock).st_gid == group.gr_gid
    with serving(sock, group="no-such-group-vnet"):  # a missing group is ignored
        assert sock.exists()


def test_start_replaces_a_stale_socket_but_not_a_live_one(sock: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))
    with serving(sock):
        assert call_json(sock, "GET", "/v1/status") == {"ok": True}
        second = HttpServer(sock, make_router(), group=None)
        with pytest.raises(ApiError, match="another process is listening on it"):
            second.start()
        assert call_json(sock, "GET", "/v1/status") == {"ok": True}


def test_start_refuses_to_replace_a_file(sock: Path) -> None:
    sock.write_text("not a socket")
    with pytest.raises(ApiError, match="it exists and is not a socket"):
        HttpServer(sock, make_router(), group=None).start()
    assert sock.read_text() == "not a socket"


def test_restart_after_stop(sock: Path) -> None:
    server = HttpServer(sock, make_router(), group=None)
    for _ in range(2):
        server.start()
        try:
            assert call_json(sock, "GET", "/v1/status") == {"ok": True}
        finally:
            server.stop()
        assert not sock.exists()


def test_stop_is_prompt_with_open_connections(sock: Path) -> None:
    server = HttpServer(sock, make_router(), group=None, read_timeout=30.0)
    server.start()
    try:
        with Raw(sock) as idle, Raw(sock) as silent:
            idle.send(get("/v1/status"))
            assert idle.response()[0] == 200
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 1.0
            assert idle.at_eof()
            assert silent.at_eof()
    finally:
        server.stop()
    assert not sock.exists()
