"""`make demo` works end to end and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, is_root


@pytest.mark.skipif(not is_root(), reason="needs root (network namespaces)")
@pytest.mark.timeout(180)
def test_demo_runs_and_cleans_up() -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    proc = subprocess.run([sys.executable, str(REPO / "demo" / "run.py"), "--no-wait"], capture_output=True,
                          text=True, timeout=170, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "demo OK" in proc.stdout
    assert "  dhcp: ack 2," in proc.stdout  # status shows the daemon's counters
    for check in ("web1 got a lease", "web1.demo.test resolves", "web1 reaches upstream",
                  "a forged source address is dropped"):
        assert f"[ok] {check}" in proc.stdout
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {ns for ns in after - before if ns.startswith("vndemo")}
