"""The lease store: durable before acknowledged (also across kill -9), group commit, readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vnet.dhcp.lease import BOUND, RELEASED, Row
from vnet.errors import HostError
from vnet.leases import LeaseStore, close_store, read_leases, store_for


def row(i: int, state: str = BOUND, expires: float | None = None, net: str = "lab") -> Row:
    return (net, f"10.77.{i // 250}.{i % 250 + 1}", f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
            b"\x01" + i.to_bytes(6, "big"), f"h{i}", expires or time.time() + 3600, state)


def test_written_rows_are_committed_for_other_readers(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.db")
    store.write([row(1)])
    # A second connection (another process, ``vnet leases``) sees it at once.
    assert [str(r.ip) for r in read_leases(tmp_path / "leases.db")] == ["10.77.0.2"]
    store.close()


def test_upsert_keeps_one_holder_per_address_and_readers_filter(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.db")
    store.write([row(1), row(2), row(3, net="other")])
    store.write([row(2, state=RELEASED), row(4, expires=time.time() - 5)])
    assert [(r.network, str(r.ip), r.state) for r in store.all_leases()] == [
        ("lab", "10.77.0.2", "bound"),
        ("lab", "10.77.0.3", "released"),
        ("lab", "10.77.0.5", "bound"),
        ("other", "10.77.0.4", "bound"),
    ]
    active = store.active_leases("lab")
    assert [(str(r.ip), r.hostname, r.mac) for r in active] == [
        ("10.77.0.2", "h1", "52:54:00:00:00:01")
    ]
    assert all(r.active for r in active)
    loaded = store.load("lab")
    assert sorted(lease.ip for lease in loaded) == sorted(
        int.from_bytes(bytes(map(int, f"10.77.0.{n}".split("."))), "big") for n in (2, 3, 5)
    )
    store.close()


def test_a_batch_is_one_transaction_and_writers_may_share_the_store(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.db")
    store.write([row(i) for i in range(500)])
    assert (store.commits, store.rows_written) == (1, 500)

    def writer(base: int) -> None:
        for i in range(50):
            store.write([row(base + i)])

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.all_leases()) == 700
    assert store.commits == 201
    store.close()


def test_store_for_shares_one_store_per_state_dir(tmp_path: Path) -> None:
    a = store_for(tmp_path)
    assert store_for(tmp_path) is a
    close_store(tmp_path)
    with pytest.raises(HostError, match="closed"):
        a.write([row(1)])


def test_reading_a_missing_database_gives_nothing(tmp_path: Path) -> None:
    assert read_leases(tmp_path / "none.db") == []


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HostError, match="cannot open lease database"):
        LeaseStore(blocker / "leases.db")


WRITER = """
import sys, time
from pathlib import Path
from vnet.leases import LeaseStore
store = LeaseStore(Path(sys.argv[1]))
i = 0
while True:
    batch = [("lab", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "m", b"k", None,
              time.time() + 60, "bound") for n in range(i, i + 20)]
    store.write(batch)
    sys.stdout.write("".join(f"{n}\\n" for n in range(i, i + 20)))
    sys.stdout.flush()
    i += 20
"""


def test_every_acknowledged_lease_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    acked: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 3000:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked += [int(line) for line in proc.stdout.read().split()]
    stored = {str(r.ip) for r in read_leases(db)}
    missing = [n for n in acked if f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" not in stored]
    assert missing == []
    assert len(stored) >= len(acked)


def test_a_batch_larger_than_one_statement_is_still_one_transaction(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.db")
    store.write([row(i) for i in range(2500)])
    assert (store.commits, len(store.all_leases())) == (1, 2500)
    store.close()
