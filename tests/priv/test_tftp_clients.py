"""TFTP acceptance with real clients: curl, atftp (windowsize) and tftp-hpa each fetch a 64 MiB
file byte-exact from vnet's TFTP service running in its own namespace; traversal is refused.

Topology: host namespace (the server on 10.77.4.1, UDP 69) <-veth-> client namespace.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NetnsFactory, ns_exec, sh, veth_into

pytestmark = pytest.mark.priv

SERVER = "10.77.4.1"
CLIENT = "10.77.4.2"
SIZE = 64 * 1024 * 1024
TEXT = b"#!ipxe\necho line two\r\nbare\rcarriage\n" * 200


@pytest.fixture(scope="module")
def tftp_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("tftp")
    (base / "secret.txt").write_text("outside the root\n")
    root = base / "root"
    root.mkdir()
    digest = hashlib.sha256()
    with (root / "big.bin").open("wb") as out:
        for _ in range(SIZE // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    (root / "notes.txt").write_bytes(TEXT)
    (root / "escape").symlink_to(base / "secret.txt")
    for p in (base, root):
        p.chmod(0o755)
    return root, digest.hexdigest()


@pytest.fixture
def served(netns_factory: NetnsFactory, tftp_root: tuple[Path, str]) -> Iterator[tuple[str, str]]:
    """(client namespace, sha256 of big.bin) with vnet's TFTP serving the root in the host ns."""
    root, digest = tftp_root
    host = netns_factory("h")
    client = netns_factory("c")
    veth_into(host, client, "veth0", "eth0")
    sh("ip", "-n", host, "addr", "add", f"{SERVER}/24", "dev", "veth0")
    sh("ip", "-n", client, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host, sys.executable, "-m", "vnet.serve.tftp", SERVER, str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening"), line
        yield client, digest
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize(
    "client_cmd",
    [
        pytest.param(["curl", "-sS", f"tftp://{SERVER}/big.bin", "-o", "{out}"], id="curl-512"),
        pytest.param(
            ["curl", "-sS", "--tftp-blksize", "1468", f"tftp://{SERVER}/big.bin", "-o", "{out}"],
            id="curl-1468",
        ),
        pytest.param(
            ["atftp", "--option", "windowsize 16", "--option", "blksize 1468", "-g",
             "-r", "big.bin", "-l", "{out}", SERVER],
            id="atftp-windowsize-16",
        ),
        pytest.param(  # blocks above the MTU: IP fragments, no UDP GSO (its fallback path)
            ["atftp", "--option", "windowsize 4", "--option", "blksize 8192", "-g",
             "-r", "big.bin", "-l", "{out}", SERVER],
            id="atftp-blksize-8192-windowsize-4",
        ),
        pytest.param(["tftp", "-m", "binary", SERVER, "-c", "get", "big.bin", "{out}"],
                     id="tftp-hpa"),
    ],
)
def test_64mib_download_is_byte_exact(
    served: tuple[str, str], tmp_path: Path, client_cmd: list[str]
) -> None:
    client, digest = served
    out = tmp_path / "out.bin"
    ns_exec(client, *(a.replace("{out}", str(out)) for a in client_cmd), timeout=90)
    assert out.stat().st_size == SIZE
    assert sha256(out) == digest


# curl's exit codes for TFTP errors: 68 = file not found (code 1), 69 = access violation (2).
@pytest.mark.parametrize(
    ("name", "curl_rc", "tftp_code"),
    [("../secret.txt", 69, 2), ("escape", 69, 2), ("/etc/passwd", 69, 2),
     ("missing.bin", 68, 1)],
)
def test_traversal_and_missing_files_are_refused(
    served: tuple[str, str], tmp_path: Path, name: str, curl_rc: int, tftp_code: int
) -> None:
    client, _ = served
    out = tmp_path / "out"
    curl = ns_exec(client, "curl", "-sS", "--path-as-is", f"tftp://{SERVER}/{name}",
                   "-o", str(out), check=False)
    assert curl.returncode == curl_rc, curl.stderr
    hpa = ns_exec(client, "tftp", "-m", "binary", SERVER, "-c", "get", name, str(out),
                  check=False)
    assert f"Error code {tftp_code}" in hpa.stdout + hpa.stderr
    assert not out.exists() or out.stat().st_size == 0


def test_write_requests_are_refused(served: tuple[str, str], tmp_path: Path) -> None:
    client, _ = served
    local = tmp_path / "upload.bin"
    local.write_bytes(b"data")
    hpa = ns_exec(client, "tftp", "-m", "binary", SERVER, "-c", "put", str(local), "upload.bin",
                  check=False)
    assert "Error code 2" in hpa.stdout + hpa.stderr


def test_netascii_mode_round_trips_line_ends(served: tuple[str, str], tmp_path: Path) -> None:
    client, _ = served
    out = tmp_path / "notes.txt"
    ns_exec(client, "tftp", "-m", "netascii", SERVER, "-c", "get", "notes.txt", str(out))
    assert out.read_bytes() == TEXT
