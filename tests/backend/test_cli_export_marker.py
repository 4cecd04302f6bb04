"""The command line writes the final mesh once: the export stage's empty marker is no mesh file."""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
from dreampolish.protocol import cli
from dreampolish.protocol import messages as m
from dreampolish.protocol.gltf import glb_to_mesh
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import octahedron


def _results(job_id: str) -> list[m.StageResult]:
    marker = MeshPayload(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))
    return [m.StageResult(stage="texture", index=0, mesh=octahedron(1.0), job_id=job_id, seq=1),
            m.StageResult(stage="export", index=1, mesh=marker, job_id=job_id, seq=2)]


class _Client:
    def events(self, job_id: str):
        return [*_results(job_id), m.Done(job_id=job_id, seq=3)]

    def fetch_result(self, job_id: str) -> m.Result:
        return m.Result(state="done", stage_results=_results(job_id), job_id=job_id)


def test_generate_writes_the_texture_mesh_as_the_final_one_and_no_export_file(tmp_path):
    out = tmp_path / "teapot.glb"
    assert cli._follow(_Client(), "j1", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teapot.glb", "teapot.texture.glb"]
    assert glb_to_mesh(out.read_bytes()).num_faces == 8


def test_fetch_writes_no_file_for_the_export_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_client", lambda args: contextlib.nullcontext(_Client()))
    assert cli.cmd_fetch(argparse.Namespace(job_id="j1", out=tmp_path)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0_texture.glb"]
