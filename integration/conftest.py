"""Fixtures for the end-to-end tests: the same namespace fixtures as ``tests/`` (every
namespace is created for one test and deleted afterwards, also on failure)."""

from __future__ import annotations

from tests.conftest import host_ns, netns_factory

__all__ = ["host_ns", "netns_factory"]
