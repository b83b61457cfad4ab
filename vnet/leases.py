"""The lease store: SQLite in WAL mode at ``STATE_DIR/leases.db``, the only writer of leases.

Durability contract: ``write(rows)`` commits a batch of lease rows in one transaction with
``synchronous=FULL`` and returns only then; the DHCP transport hands it every lease change of
one receive cycle (group commit: the ACKs of the last ~ms share one fsync) and sends those ACKs
afterwards. So an ACK a client saw is on disk, also after ``kill -9``; the table's primary key
(network, ip) means one address has one holder. Writes are serialised by a lock, so several
listener threads may share the store. (Committing in the receiving thread, not a writer
thread, is deliberate: handing the GIL back and forth between two busy threads cost up to the
5 ms switch interval per hand-off and capped ACKs below 1,000/s.)

Readers: ``LeaseStore.active_leases(network)`` (in-process, e.g. the DNS service at start), or
``read_leases(db_path)`` without a running daemon (``vnet leases``). ``store_for(state_dir)``
gives every service of the process the same store.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vnet.dhcp.lease import BOUND, Lease, Row
from vnet.errors import HostError

log = logging.getLogger(__name__)

DB_NAME = "leases.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    network  TEXT NOT NULL,
    ip       TEXT NOT NULL,
    mac      TEXT NOT NULL,
    client   BLOB NOT NULL,
    hostname TEXT,
    expires  REAL NOT NULL,
    state    TEXT NOT NULL,
    PRIMARY KEY (network, ip)
) WITHOUT ROWID
"""
CHUNK = 1000  # rows per INSERT statement (7,000 bound values, below SQLite's limit)


@functools.lru_cache(maxsize=64)
def _upsert(rows: int) -> str:
    return "INSERT OR REPLACE INTO leases VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * rows)

COLUMNS = "network, ip, mac, client, hostname, expires, state"


@dataclass(frozen=True)
class LeaseRecord:
    """One lease as other parts of vnet see it."""

    network: str
    ip: ipaddress.IPv4Address
    mac: str
    hostname: str | None
    expires: float
    state: str
    client: bytes

    @property
    def active(self) -> bool:
        return self.state == BOUND and self.expires > time.time()


def lease_json(record: LeaseRecord) -> dict[str, object]:
    """A lease as the API and ``vnet leases --json`` show it (address and client id as text)."""
    return {"network": record.network, "ip": str(record.ip), "mac": record.mac,
            "hostname": record.hostname, "expires": record.expires, "state": record.state,
            "client": record.client.hex()}


def _record(row: tuple[str, str, str, bytes, str | None, float, str]) -> LeaseRecord:
    network, ip, mac, client, hostname, expires, state = row
    return LeaseRecord(network, ipaddress.IPv4Address(ip), mac, hostname, expires, state, client)


def _query(
    conn: sqlite3.Connection, network: str | None, active_at: float | None, mac: str | None = None
) -> list[LeaseRecord]:
    sql = f"SELECT {COLUMNS} FROM leases"
    where: list[str] = []
    args: list[object] = []
    if network is not None:
        where.append("network = ?")
        args.append(network)
    if mac is not None:
        where.append("mac = ?")
        args.append(mac)
    if active_at is not None:
        where.append("state = ? AND expires > ?")
        args += [BOUND, active_at]
    if where:
        sql += " WHERE " + " AND ".join(where)
    records = [_record(r) for r in conn.execute(sql, args)]
    records.sort(key=lambda r: (r.network, r.ip))
    return records


def read_leases(
    db_path: Path, network: str | None = None, active_only: bool = False
) -> list[LeaseRecord]:
    """Leases from a lease database, opened read-only (no daemon needed). [] if none exists."""
    if not db_path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as err:
        raise HostError(f"cannot open lease database {db_path}: {err}") from err
    try:
        return _query(conn, network, time.time() if active_only else None)
    except sqlite3.Error as err:
        raise HostError(f"cannot read lease database {db_path}: {err}") from err
    finally:
        conn.close()


class LeaseStore:
    """The one writer of ``leases.db``; see the module docstring for the contract."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # Checkpoints run in the writer every 1,000 WAL pages (SQLite's default). Measured
            # here, that beat a background checkpoint thread: after a complete checkpoint the
            # WAL starts over and commits overwrite allocated blocks, so each fdatasync needs
            # no file-system metadata commit.
            self._conn.execute("PRAGMA wal_autocheckpoint=1000")
            self._conn.execute(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise HostError(f"cannot open lease database {path}: {err}") from err
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(str(path), check_same_thread=False)
        self._closed = False
        self.commits = 0
        self.rows_written = 0
        self.errors = 0

    # ----- writing -----

    def write(self, rows: Sequence[Row]) -> None:
        """Make ``rows`` durable in one transaction (fsync'd) before returning.

        The caller batches: the DHCP transport passes every lease change of one receive cycle
        (group commit) and sends the ACKs after this returns. Raises HostError when the rows
        could not be committed (nothing of them is then on disk)."""
        if not rows:
            return
        with self._write_lock:
            if self._closed:
                raise HostError(f"lease store {self.path} is closed")
            conn = self._conn
            try:
                if len(rows) <= CHUNK:
                    # One statement in autocommit mode is one transaction: a single call into
                    # SQLite (the GIL is released once, not per row).
                    conn.execute(_upsert(len(rows)), [v for r in rows for v in r])
                else:
                    conn.execute("BEGIN")
                    for i in range(0, len(rows), CHUNK):
                        chunk = rows[i : i + CHUNK]
                        conn.execute(_upsert(len(chunk)), [v for r in chunk for v in r])
                    conn.execute("COMMIT")
            except sqlite3.Error as err:
                self.errors += 1
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise HostError(
                    f"lease database {self.path}: commit of {len(rows)} leases failed: {err}"
                ) from err
            self.commits += 1
            self.rows_written += len(rows)

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        with self._read_lock:
            self._reader.close()

    # ----- reading -----

    def load(self, network: str) -> list[Lease]:
        """Every stored lease of ``network`` (all states), for the DHCP core at start."""
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {COLUMNS} FROM leases WHERE network = ?", (network,)
            ).fetchall()
        return [
            Lease(int(ipaddress.IPv4Address(ip)), mac, client, state, expires, hostname)
            for _, ip, mac, client, hostname, expires, state in rows
        ]

    def active_leases(self, network: str | None = None) -> list[LeaseRecord]:
        """Bound, unexpired leases (of one network or all), as committed."""
        with self._read_lock:
            return _query(self._reader, network, time.time())

    def active_for(self, network: str, mac: str) -> list[LeaseRecord]:
        """One client's bound, unexpired leases in ``network``."""
        with self._read_lock:
            return _query(self._reader, network, time.time(), mac)

    def all_leases(self, network: str | None = None) -> list[LeaseRecord]:
        with self._read_lock:
            return _query(self._reader, network, None)


_stores: dict[Path, LeaseStore] = {}
_stores_lock = threading.Lock()


def store_for(state_dir: Path) -> LeaseStore:
    """The process's store for ``state_dir`` (opened on first use)."""
    path = (state_dir / DB_NAME).resolve()
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = LeaseStore(path)
        return store


def close_store(state_dir: Path) -> None:
    """Flush and close the process's store for ``state_dir`` (the daemon, at exit)."""
    path = (state_dir / DB_NAME).resolve()
    with _stores_lock:
        store = _stores.pop(path, None)
    if store is not None:
        store.close()
