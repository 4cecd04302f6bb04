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


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n N --dist loadscope` (make test): one unit per module, the Ray modules together, the longest units
    first (tests/support/module_scheduler.py says why xdist's own loadgroup cannot). Blender's interpreter has
    no xdist: the hook is optional there."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.module_scheduler import make_scheduler

    return make_scheduler(config, log)
