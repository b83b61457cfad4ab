"""The TFTP service of one network: UDP 69 on the gateway address, read-only, per-network root.

Thin transport around ``vnet.tftp``: a listener thread reads requests on port 69 and hands
each accepted read to its own thread with its own ephemeral socket (connected to the client,
so the kernel drops datagrams from any other transfer ID). The per-transfer loop is a blocking
``recv`` with the state machine's deadline as timeout: on this machine that beats an event
loop on the round-trip-bound lock-step path. Stopping shuts the sockets down, which wakes every
blocked ``recv`` at once.

Run standalone (tests, benchmarks): ``python -m vnet.serve.tftp ADDRESS ROOT [--port N]``;
it prints ``listening ADDRESS:PORT`` once ready and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from vnet.errors import HostError
from vnet.model import Network
from vnet.serve import Service, ServiceContext
from vnet.tftp.options import Limits
from vnet.tftp.packet import ErrorCode, encode_error
from vnet.tftp.paths import Refused
from vnet.tftp.session import Accepted, accept
from vnet.tftp.transfer import Outcome

log = logging.getLogger(__name__)

TFTP_PORT = 69
MAX_TRANSFERS = 1024  # all clients together; each one is a thread and a socket
_RECV = 2048  # a reader only ever sends ACK and ERROR packets
IP_FREEBIND = 15  # linux/in.h; not exported by Python's socket module
_SOL_UDP, _UDP_SEGMENT = 17, 103  # linux/udp.h: UDP GSO segment size
_MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS
_MAX_UDP_PAYLOAD = 65507
DEFAULT_LIMITS = Limits()


def create(network: Network, ctx: ServiceContext) -> Service | None:
    """The TFTP service of ``network``, or None if it has no ``tftp`` or no IPv4 gateway."""
    if network.tftp is None or network.ipv4 is None:
        return None
    return TftpService(
        address=str(network.ipv4.gateway),
        root=Path(network.tftp.root),
        max_per_client=network.tftp.max_transfers_per_client,
        label=f"tftp/{network.name}",
    )


class TftpService:
    """Serve ``root`` read-only on ``address``:``port`` (port 0: any, see ``port`` after start).

    ``label`` names the service in logs and thread names (``tftp/<network>``).
    """

    name = "tftp"

    def __init__(
        self,
        address: str,
        root: Path,
        port: int = TFTP_PORT,
        max_per_client: int = 8,
        limits: Limits = DEFAULT_LIMITS,
        label: str = "tftp",
    ) -> None:
        self.label = label
        self.address = address
        self.port = port
        self.root = root
        self.max_per_client = max_per_client
        self.limits = limits
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._active: dict[tuple[str, int], socket.socket] = {}
        self._per_client: Counter[str] = Counter()
        self._workers: set[threading.Thread] = set()
        self._stats: Counter[str] = Counter()

    def start(self) -> None:
        sock = self._socket()
        try:
            sock.bind((self.address, self.port))
        except OSError as err:
            sock.close()
            raise HostError(
                f"{self.label}: cannot listen on {self.address} port {self.port}: {err.strerror}"
            ) from err
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._listen, name=self.label, daemon=True)
        self._thread.start()
        log.info("%s: serving %s on %s:%d", self.label, self.root, self.address, self.port)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            socks = [self._listener, *self._active.values()]
            workers = list(self._workers)
        for sock in socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv
        if self._thread is not None:
            self._thread.join(5)
        for worker in workers:
            worker.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._stats, "active": len(self._active)}

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The gateway address may not be on the bridge yet when the daemon starts services.
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        return sock

    def _listen(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                datagram, client = listener.recvfrom(_RECV)
            except OSError:
                break
            if self._stopping.is_set():
                break
            if not datagram:
                continue
            try:
                self._on_request(datagram, client)
            except Exception:
                log.exception("%s: request from %s failed", self.label, client)

    def _on_request(self, datagram: bytes, client: tuple[str, int]) -> None:
        ip = client[0]
        with self._lock:
            if client in self._active:
                return  # a retransmitted request: that transfer's own timer resends
            if len(self._active) >= MAX_TRANSFERS:
                refusal = Refused(ErrorCode.NOT_DEFINED, "server busy, try again later")
            elif self._per_client[ip] >= self.max_per_client:
                refusal = Refused(ErrorCode.NOT_DEFINED, "too many transfers from this client")
            else:
                refusal = None
        if refusal is None:
            try:
                accepted = accept(datagram, self.root, self.limits)
            except Refused as err:
                refusal = err
        if refusal is not None:
            log.info("%s: refused %s: %s", self.label, client, refusal.message)
            self._count("refused")
            self._reply_error(client, refusal)
            return
        sock = self._socket()
        try:
            sock.bind((self.address, 0))
            sock.connect(client)
        except OSError:
            sock.close()
            os.close(accepted.file.fd)
            raise
        worker = threading.Thread(
            target=self._serve, args=(sock, client, accepted), name=f"{self.label} {client}",
            daemon=True,
        )
        with self._lock:
            # stop() sets _stopping before it takes its snapshot under this lock: a transfer
            # registered here is either in the snapshot or never starts.
            if self._stopping.is_set():
                sock.close()
                os.close(accepted.file.fd)
                return
            self._active[client] = sock
            self._per_client[ip] += 1
            self._workers.add(worker)
            self._stats["started"] += 1
            worker.start()
        log.info("%s: %s reads %s", self.label, client, accepted.request.filename)

    def _serve(self, sock: socket.socket, client: tuple[str, int], accepted: Accepted) -> None:
        transfer = accepted.transfer
        monotonic, recv, prepare = time.monotonic, sock.recv, transfer.prepare
        send = _Sender(sock, transfer.blksize, transfer.windowsize)
        send_one = sock.send if transfer.windowsize == 1 else None  # lock-step: the short path
        armed = 0.0  # the kernel receive timeout (SO_RCVTIMEO) currently set
        try:
            send(transfer.start(monotonic()))
            transfer.prepare()
            while not transfer.finished and not self._stopping.is_set():
                wait = transfer.deadline - monotonic()
                if wait <= 0:
                    out = transfer.on_timeout(monotonic())
                else:
                    # A kernel timeout instead of Python's settimeout(): no poll() per packet,
                    # and shutdown() wakes a blocked recv. Re-armed only when it drifts.
                    if abs(armed - wait) > 0.05 * armed + 0.001:
                        _set_recv_timeout(sock, wait)
                        armed = wait
                    try:
                        datagram = recv(_RECV)
                    except BlockingIOError:
                        out = transfer.on_timeout(monotonic())
                    except ConnectionRefusedError:
                        continue  # ICMP port unreachable for an earlier send; the timer decides
                    else:
                        if not datagram and self._stopping.is_set():
                            break
                        out = transfer.on_datagram(datagram, monotonic())
                if out:
                    if send_one is not None and len(out) == 1:
                        send_one(out[0])
                    else:
                        send(out)
                    prepare()
        except OSError as err:
            log.info("%s: transfer to %s ended: %s", self.label, client, err)
        finally:
            sock.close()
            os.close(accepted.file.fd)
            outcome = transfer.outcome.value if transfer.outcome else "stopped"
            log.info(
                "%s: %s %s: %s %s", self.label, client, accepted.request.filename, outcome,
                transfer.detail,
            )
            with self._lock:
                self._active.pop(client, None)
                self._per_client[client[0]] -= 1
                if self._per_client[client[0]] <= 0:
                    del self._per_client[client[0]]
                self._workers.discard(threading.current_thread())
                self._stats[outcome] += 1
                self._stats["datagrams"] += transfer.datagrams_sent
                if transfer.outcome is Outcome.COMPLETE:
                    self._stats["bytes"] += accepted.file.size

    def _reply_error(self, client: tuple[str, int], refusal: Refused) -> None:
        # From a fresh port, like every other reply of a transfer (RFC 1350 TIDs).
        with contextlib.suppress(OSError), self._socket() as sock:
            sock.bind((self.address, 0))
            sock.sendto(encode_error(refusal.code, refusal.message), client)

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1


class _Sender:
    """Send a transfer's datagrams; a window of full blocks goes out as ONE UDP GSO send.

    With ``UDP_SEGMENT`` set to the DATA packet size, the kernel cuts one buffer of N packets
    back to back into N datagrams after a single pass through the stack (Linux >= 4.18): a
    window of 16 costs one syscall instead of 16. Every packet but the last of a window is a
    full block, so the cuts fall on packet boundaries. If the route cannot do it (a block
    larger than the path MTU, no checksum offload), the first send fails and the transfer
    falls back to one send per datagram.
    """

    def __init__(self, sock: socket.socket, blksize: int, windowsize: int) -> None:
        self._send = sock.send
        self._sendmsg = sock.sendmsg
        self._sock = sock
        self._segment = blksize + 4
        self._per_send = min(_MAX_GSO_SEGMENTS, _MAX_UDP_PAYLOAD // self._segment)
        self._gso = windowsize > 1 and self._per_send > 1
        if self._gso:
            try:
                sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, self._segment)
            except OSError:
                self._gso = False

    def __call__(self, datagrams: list[bytes]) -> None:
        if self._gso and len(datagrams) > 1:
            try:
                self._send_segmented(datagrams)
                return
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOTSUP):
                    raise
                log.info("UDP GSO unavailable (%s): one send per datagram", err.strerror)
                self._gso = False
                self._sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, 0)
        for datagram in datagrams:
            self._send(datagram)

    def _send_segmented(self, datagrams: list[bytes]) -> None:
        segment, step = self._segment, self._per_send
        for i in range(0, len(datagrams), step):
            chunk = datagrams[i : i + step]
            if len(chunk) > 1 and all(len(d) == segment for d in chunk[:-1]):
                self._sendmsg(chunk)  # one datagram from the pieces, cut by the kernel
            else:
                for datagram in chunk:
                    self._send(datagram)


def _set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    usec = max(1000, int(seconds * 1_000_000))
    timeval = struct.pack("ll", *divmod(usec, 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vnet.serve.tftp", description="Serve one directory over TFTP (read-only)."
    )
    parser.add_argument("address")
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=TFTP_PORT)
    parser.add_argument("--max-per-client", type=int, default=8)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    service = TftpService(args.address, args.root, args.port, args.max_per_client)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    try:
        service.start()
    except HostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"listening {service.address}:{service.port}", flush=True)
    done.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
