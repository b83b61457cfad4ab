"""The attachment store: SQLite (WAL, ``synchronous=FULL``) at ``STATE_DIR/attachments.db``.

The only writer of attachments (guest ports made at run time by the API or the hooks). Same
durability as leases: ``put`` and ``delete`` return once the change is on disk, so an
attachment a caller was told about survives ``kill -9``. The daemon writes an attachment
BEFORE it makes the port, and deletes it AFTER the port is gone: after a crash at any moment,
the next start's reconcile (files + attachments) creates or removes what is left over.
``read_attachments`` reads without a daemon (``vnet plan``/``apply``/``status`` when none runs).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from vnet.errors import HostError
from vnet.model import Attachment, Origin, PortKind

DB_NAME = "attachments.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    network  TEXT NOT NULL,
    guest    TEXT NOT NULL,
    mac      TEXT NOT NULL,
    ifname   TEXT UNIQUE,  -- NULL: pending (adopted by MAC when libvirt makes it)
    port     TEXT NOT NULL,
    policies TEXT NOT NULL,
    netns    TEXT,
    origin   TEXT NOT NULL,
    PRIMARY KEY (network, guest)
) WITHOUT ROWID
"""
COLUMNS = "network, guest, mac, ifname, port, policies, netns, origin"


def _row(a: Attachment) -> tuple[str, ...]:
    return (a.network, a.guest, a.mac, a.ifname, a.port.value, json.dumps(list(a.policies)),
            a.netns, a.origin.value)  # type: ignore[return-value]


def _attachment(row: tuple[str, str, str, str | None, str, str, str | None, str]) -> Attachment:
    network, guest, mac, ifname, port, policies, netns, origin = row
    return Attachment(network=network, guest=guest, mac=mac, ifname=ifname, port=PortKind(port),
                      policies=tuple(json.loads(policies)), netns=netns, origin=Origin(origin))


class AttachmentStore:
    """Attachments of one state dir; thread-safe (one connection, one lock)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Checkpoints (copying the WAL into the database, with its fsyncs) run when the
            # daemon is idle (``checkpoint``), not inside a guest's attach.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(SCHEMA)
            rows = self._db.execute(f"SELECT {COLUMNS} FROM attachments").fetchall()
        except sqlite3.Error as err:
            raise HostError(f"cannot open the attachment store {self.path}: {err}") from err
        self._lock = threading.Lock()
        # The store is the only writer: its rows are also held here, written through, so a
        # read costs no query (the controller reads them on every guest change).
        self._rows: dict[tuple[str, str], Attachment] = {
            (a.network, a.guest): a for a in map(_attachment, rows)}

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database (the daemon calls this when idle)."""
        try:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            raise HostError(f"cannot checkpoint the attachment store {self.path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def all(self, network: str | None = None) -> list[Attachment]:
        with self._lock:
            rows = [a for a in self._rows.values() if network is None or a.network == network]
        return sorted(rows, key=lambda a: (a.network, a.guest))

    def get(self, network: str, guest: str) -> Attachment | None:
        with self._lock:
            return self._rows.get((network, guest))

    def put(self, att: Attachment) -> None:
        """Insert or replace (same network and guest); durable when it returns."""
        try:
            with self._lock:
                self._db.execute(f"INSERT OR REPLACE INTO attachments ({COLUMNS}) VALUES "
                                 "(?,?,?,?,?,?,?,?)", _row(att))
                self._rows[(att.network, att.guest)] = att
        except sqlite3.Error as err:
            raise HostError(f"cannot record attachment of guest {att.guest!r}: {err}") from err

    def delete(self, network: str, guest: str) -> bool:
        """Remove one attachment; False when there was none."""
        try:
            with self._lock:
                cur = self._db.execute("DELETE FROM attachments WHERE network = ? AND guest = ?",
                                       (network, guest))
                self._rows.pop((network, guest), None)
        except sqlite3.Error as err:
            raise HostError(f"cannot remove attachment of guest {guest!r}: {err}") from err
        return cur.rowcount > 0


def read_attachments(state_dir: Path, network: str | None = None) -> list[Attachment]:
    """Attachments on disk, without a daemon ([] when there is no store yet)."""
    path = state_dir / DB_NAME
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            query = f"SELECT {COLUMNS} FROM attachments"
            args: tuple[str, ...] = ()
            if network is not None:
                query += " WHERE network = ?"
                args = (network,)
            rows = db.execute(query + " ORDER BY network, guest", args).fetchall()
        finally:
            db.close()
    except sqlite3.Error as err:
        raise HostError(f"cannot read the attachment store {path}: {err}") from err
    return [_attachment(r) for r in rows]
