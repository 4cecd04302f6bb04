"""protocol/ vendored as the add-on does it (a subpackage under another name), under Blender's Python
and numpy 1.26 (.venv-blender), talking to a backend running under the main environment."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.pipelines import running_backend

REPO = Path(__file__).resolve().parents[2]
BLENDER_PYTHON = REPO / ".venv-blender" / "bin" / "python"

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    assert np.__version__.startswith("1."), np.__version__
    from vendored_addon.dp_protocol import codec, messages as m
    from vendored_addon.dp_protocol.client import BackendClient
    from vendored_addon.dp_protocol.job import JobSpec
    from vendored_addon.dp_protocol.scene import MeshPayload

    mesh = MeshPayload(np.random.rand(4, 3).astype(np.float32), np.array([[0, 1, 2], [1, 2, 3]], np.uint32))
    back = codec.decode([bytes(f) for f in codec.encode(m.Resume(job_id="j", mesh=mesh))])
    assert np.array_equal(back.mesh.vertices, mesh.vertices) and not back.mesh.vertices.flags.writeable

    with BackendClient(sys.argv[1], timeout_s=10) as client:
        client.connect()
        job = client.submit(JobSpec("from blender", mode="texture", input_mesh=mesh))
        results = client.wait(job, timeout_s=30)
        print("stages", [r.stage for r in results], results[-1].mesh.num_faces)
    """
)


@pytest.mark.skipif(
    not BLENDER_PYTHON.exists(), reason="the .venv-blender environment is not built (make venv-blender)"
)
def test_vendored_protocol_under_numpy_1(tmp_path):
    package = tmp_path / "vendored_addon"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copytree(
        REPO / "protocol", package / "dp_protocol", ignore=shutil.ignore_patterns("__pycache__", "cli.py")
    )
    with running_backend(tmp_path / "store") as server:
        proc = subprocess.run(
            [str(BLENDER_PYTHON), "-c", SCRIPT, server.endpoint],
            cwd=tmp_path,
            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "stages ['texture'] 2" in proc.stdout
