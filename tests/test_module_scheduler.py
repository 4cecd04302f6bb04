"""make test's spread over the cores (tests/support/module_scheduler.py): a module's tests run in one worker, so
a module fixture that takes minutes is built once; the Ray modules share a worker; the long units go first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import module_scheduler

REPO_ROOT = Path(__file__).resolve().parent.parent

MODULE = '''
import os, pytest

@pytest.fixture(scope="module")
def built():
    with open(os.environ["SETUPS"], "a") as f:
        f.write(__name__ + " " + str(os.getpid()) + "\\n")
    return 1

@pytest.mark.parametrize("n", range(6))
def test_one(built, n):
    pass

def test_two(built):
    pass
'''

CONFTEST = "from tests.conftest import pytest_xdist_make_scheduler  # noqa: F401\n"
"""The suite's own hook (tests/conftest.py), not a copy."""


def test_every_module_fixture_is_built_once_across_two_workers(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name in ("alpha", "beta", "gamma"):
        (suite / f"test_{name}.py").write_text(MODULE)
    setups = tmp_path / "setups.txt"
    env = {"SETUPS": str(setups), "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadscope", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(suite), str(suite)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    modules = [line.split()[0] for line in setups.read_text().splitlines()]
    assert sorted(modules) == ["test_alpha", "test_beta", "test_gamma"], modules


def test_the_ray_modules_share_a_unit_and_other_modules_are_their_own():
    ray = [module_scheduler.unit_of(f"{m}::test_x") for m in module_scheduler.SHARED_UNITS]
    assert set(ray) == {"ray-clusters"}
    assert module_scheduler.unit_of("tests/backend/test_jobs.py::test_x[1]") == "tests/backend/test_jobs.py"


def test_the_long_units_are_named_by_modules_that_exist_and_rank_first():
    assert module_scheduler.unknown_units(REPO_ROOT) == []
    first = module_scheduler.LONGEST_FIRST[0]
    assert module_scheduler.rank(first) == 0
    assert module_scheduler.rank("tests/backend/test_jobs.py") == len(module_scheduler.LONGEST_FIRST)
