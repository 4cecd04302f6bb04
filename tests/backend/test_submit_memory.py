"""A submitted mesh is kept on disk, not in memory: the job keeps its spec without the mesh, and the
pipeline still gets the mesh (read from spec.msg), also after a restart."""

from __future__ import annotations

import numpy as np
import pytest
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


def grid_mesh(n: int) -> MeshPayload:
    rng = np.random.default_rng(0)
    vertices = rng.random((n, 3), dtype=np.float32)
    faces = (np.arange(n * 3, dtype=np.uint32) % n).reshape(n, 3)
    return MeshPayload(vertices=vertices, faces=faces)


def test_the_input_mesh_is_not_held_by_the_job_and_still_reaches_the_pipeline(tmp_path):
    mesh = grid_mesh(50_000)
    store = tmp_path / "store"
    with running_backend(store) as server:
        with BackendClient(server.endpoint, timeout_s=10) as c:
            c.connect()
            job = c.submit(JobSpec("refine", mode="geometry", input_mesh=mesh, pause_after=["dmtet"]))
            assert server.manager.get(job).spec.input_mesh is None
            events = list(c.events(job, timeout_s=30))
            assert isinstance(events[-1], m.Paused)
            first = next(e for e in events if isinstance(e, m.StageResult))
            np.testing.assert_allclose(first.mesh.vertices, mesh.vertices * (1 + 0.25 * first.index), rtol=1e-6)
    with running_backend(store) as server:  # a restart loads the job without its mesh, too
        assert server.manager.get(job).spec.input_mesh is None
        with BackendClient(server.endpoint, timeout_s=10) as c:
            c.connect()
            c.attach(job, events[-1].seq)
            c.resume(job)
            results = c.wait(job, timeout_s=30)  # the stages after the gate, run from spec.msg's mesh
            assert [r.stage for r in results] == ["polish", "texture"]
            np.testing.assert_array_equal(results[-1].mesh.faces, mesh.faces)
