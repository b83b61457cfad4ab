"""The guest-kernel tier: ONE QEMU guest runs ``pytest -m guest tests/guest`` on its own kernel.

This machine's kernel lacks 8021q, bonding and bridge VLAN filtering, so the tests of that code
live in tests/guest/ and run inside a Debian guest (TCG) booted by tests/guestvm.py, with the
host root shared read-only. This test fails, showing the guest's output, when the inner run
fails, crashes, times out, or runs no test (or skips one: in the guest they must all run).
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import NS_PREFIX, is_root
from tests.guestvm import GuestResult, prepare_assets, qemu_available, run_pytest_in_guest

pytestmark = pytest.mark.priv


def outcome_counts(result: GuestResult) -> dict[str, int]:
    """The counts of pytest's final summary line (``== 3 passed, 1 skipped in 9.1s ==``)."""
    lines = [ln for ln in result.output.splitlines() if re.match(r"^=+ .* in [\d.]+s", ln)]
    if not lines:
        return {}
    found = re.findall(r"(\d+) (\w+)", lines[-1])
    return {word.rstrip("s") if word != "passed" else word: int(n) for n, word in found}


@pytest.mark.timeout(600)
def test_guest_kernel_tier() -> None:
    if not is_root():
        pytest.skip("needs root (the guest's tests create network namespaces)")
    if not qemu_available():
        pytest.skip("needs qemu-system-x86_64")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to fetch the Debian guest kernel")
    prepare_assets()  # cached; `python tests/guestvm.py --prepare` fetches ahead of the suite

    result = run_pytest_in_guest(
        ["-m", "guest", "tests/guest"], timeout=480, env={"VNET_TEST_NS_PREFIX": NS_PREFIX}
    )

    assert not result.timed_out, result.describe()
    assert result.returncode == 0, result.describe()
    counts = outcome_counts(result)
    assert counts.get("passed", 0) >= 1, f"the guest ran no test\n{result.describe()}"
    not_run = {k: v for k, v in counts.items() if k not in ("passed", "second", "warning")}
    assert not not_run, f"guest tests did not all run: {not_run}\n{result.describe()}"
