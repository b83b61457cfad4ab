"""Guest-kernel tier: these tests need 8021q, bonding and bridge VLAN filtering.

They run only inside the QEMU guest that ``tests/priv/test_guest_tier.py`` boots (it sets
``VNET_IN_GUEST=1`` and runs ``pytest -m guest tests/guest`` there, against the guest kernel).
Collected anywhere else, they are skipped with that reason: this machine's kernel lacks the
features, and the host-side tier test reports their real outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
IN_GUEST = os.environ.get("VNET_IN_GUEST") == "1"
SKIP_REASON = (
    "guest-kernel test: runs only inside the QEMU guest booted by "
    "tests/priv/test_guest_tier.py (VNET_IN_GUEST=1)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)
