"""Shared by every suite. It is loaded by two interpreters — the backend's (.venv, torch) and Blender's
(.venv-blender, bpy, numpy<2, no torch) — so it must import neither torch nor bpy. Suite-specific fixtures
live in tests/<suite>/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Helpers (tests/support/) are importable as `tests.support.*` from the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.ports import free_tcp_port  # noqa: E402


@pytest.fixture
def loopback_address() -> str:
    """A fresh tcp://127.0.0.1:PORT address for a backend under test."""
    return f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


SHARED_GROUPS = {
    "test_executor_ray.py": "ray-clusters",
    "test_ray_cluster_recipe.py": "ray-clusters",
}
"""Modules whose tests must run in one worker one after another (pytest-xdist, `make test`'s -n): both start
local Ray clusters, which would contend for Ray's fixed ports."""


def pytest_collection_modifyitems(config, items) -> None:
    """Under pytest-xdist's `--dist loadgroup`, a module's tests stay in one worker (its module-scoped
    fixtures, such as a micro generation, are built once, not once per worker), and SHARED_GROUPS' modules in
    one. Without xdist the marks change nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(module.rsplit("/", 1)[-1], module)))
