"""How `make test` spreads the suites over the cores (pytest-xdist, `-n N --dist loadscope`): one test module
per work unit, so that a module's module-scoped fixtures (a micro generation takes minutes) are built once, in
one worker; the modules in SHARED_UNITS together (both start local Ray clusters, which contend for Ray's
fixed ports); and the longest units first, so that no worker starts a six-minute module when the others are
nearly done.

xdist's own `--dist loadgroup` marks cannot do this under pytest 9.2: xdist 3.8 groups by a suffix that it
writes to `item._nodeid`, and pytest 9.2 no longer reads a node's id from there, so every test was sent on
its own and a module fixture was built once per worker that ran one of the module's tests (the micro quality
module's two generations twice, 392 s more on the critical path in CI)."""

from __future__ import annotations

from pathlib import PurePosixPath

SHARED_UNITS = {
    "tests/backend/test_executor_ray.py": "ray-clusters",
    "tests/backend/test_ray_cluster_recipe.py": "ray-clusters",
}

LONGEST_FIRST = (
    "tests/backend/micro/test_micro_picture.py",
    "tests/backend/micro/test_micro_quality.py",  # the green torus (the red cone is scored on the game-ready job)
    "tests/backend/micro/test_micro_game_ready.py",  # one micro generation with its texture (issue 30)
    "tests/e2e/test_demo_end_to_end.py",
    "tests/backend/micro/test_robustness_slice.py",
    "tests/backend/micro/test_multiview_torus.py",
    "tests/backend/micro/test_multiview_cone.py",
    "ray-clusters",
    "tests/backend/geometry/test_hashgrid_triton.py",
    "tests/backend/commands/test_dryrun.py",
    "tests/backend/micro/test_micro_masked_refine.py",
    "tests/backend/micro/test_micro_models.py",
    "tests/backend/commands/test_projected_time.py",
)
"""The units that took over a minute in CI's `--durations` list, longest first; every other unit follows in
collection order. A name here that no longer exists is an error (tests/test_module_scheduler.py)."""


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its module's path, or the shared unit's name."""
    module = nodeid.split("::", 1)[0]
    return SHARED_UNITS.get(module, module)


def rank(unit: str) -> int:
    """A unit's place in LONGEST_FIRST, after all of them if it is not there."""
    return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)


def make_scheduler(config, log):
    """pytest-xdist's LoadScopeScheduling with units by unit_of, each assignment taking the remaining unit
    that ranks first (ties: the order xdist queued them in)."""
    from xdist.scheduler.loadscope import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            best = min(self.workqueue, key=rank)  # min keeps the first of equals
            self.workqueue.move_to_end(best, last=False)
            super()._assign_work_unit(node)

    return ModuleScheduling(config, log)


def unknown_units(root) -> list[str]:
    """LONGEST_FIRST's and SHARED_UNITS' names that are no test module of the tree at root."""
    named = [u for u in LONGEST_FIRST if u not in SHARED_UNITS.values()] + list(SHARED_UNITS)
    return [u for u in named if not (root / PurePosixPath(u)).is_file()]
