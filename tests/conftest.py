"""Shared by every suite. It is loaded by two interpreters — the backend's (.venv, torch) and Blender's
(.venv-blender, bpy, numpy<2, no torch) — so it must import neither torch nor bpy. Suite-specific fixtures
live in tests/<suite>/conftest.py."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Test pipelines (tests/pipelines.py) are importable as `tests.pipelines` from the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loopback_address() -> str:
    """A fresh tcp://127.0.0.1:PORT address for a backend under test."""
    return f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
