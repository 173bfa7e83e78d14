"""Ray tests run only inside a loopback-only network namespace (tests/test_ray.py starts them there):
Ray probes the network at start-up even with usage stats off, and no test may send a packet outside
127.0.0.0/8."""

from __future__ import annotations

from pathlib import Path

import pytest


def in_loopback_namespace() -> bool:
    """True when the only network interface is the loopback one (``unshare -n``)."""
    import socket

    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]  # this network namespace's interfaces
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    if in_loopback_namespace():
        return
    skip = pytest.mark.skip(reason="Ray tests run inside a loopback-only network namespace: see tests/test_ray.py")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)
