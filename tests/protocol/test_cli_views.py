"""`dreampolish generate --view PICTURE CAMERA` (issue 31): the pictures and their camera files travel as the
request's views, in order; a bad picture or camera file is refused before anything is sent, naming it."""

from __future__ import annotations

import numpy as np
import pytest
from dreampolish.protocol import cli
from dreampolish.protocol.camera_json import save_camera_json
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import CameraSpec

from tests.support.images import png_bytes, rgba
from tests.support.pipelines import ScriptedPipeline, running_backend

SEEN: list[JobSpec] = []


class RecordingPipeline(ScriptedPipeline):
    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        SEEN.append(spec)


def _view(tmp_path, i: int, name: str) -> list[str]:
    picture = tmp_path / f"{name}.png"
    picture.write_bytes(png_bytes(rgba(32, 32)))
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, 3] = (0.0, -4.0 - i, 0.5)
    camera = save_camera_json(CameraSpec(matrix_world=matrix, resolution=(32, 32), name=name), tmp_path / f"{name}.json")
    return ["--view", str(picture), str(camera)]


def test_views_travel_with_their_cameras_in_order(tmp_path):
    SEEN.clear()
    with running_backend(tmp_path / "store", pipeline=RecordingPipeline) as server:
        argv = ["generate", *_view(tmp_path, 0, "front"), *_view(tmp_path, 1, "side"), "--backend", server.endpoint,
                "--out", str(tmp_path / "out.glb")]
        assert cli.main(argv) == 0
    (spec,) = SEEN
    assert [v.camera.name for v in spec.views] == ["front", "side"]
    assert spec.views[1].image.png == (tmp_path / "side.png").read_bytes()
    assert float(spec.views[1].camera.matrix_world[1, 3]) == -5.0 and spec.image is None


def test_a_bad_view_file_is_named_before_anything_is_sent(tmp_path, capsys):
    args = _view(tmp_path, 0, "front") + _view(tmp_path, 1, "side")
    (tmp_path / "side.png").write_bytes(b"not a png")
    # no backend listens there: the error comes first
    assert cli.main(["generate", *args, "--backend", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.glb")]) != 0
    err = capsys.readouterr().err
    assert "view 1" in err and "side.png" in err and "not a PNG" in err


@pytest.mark.parametrize("content,message", [("{}", "no matrix_world"), ('{"lens": 1}', "unknown fields")])
def test_a_bad_camera_file_is_named(tmp_path, capsys, content, message):
    args = _view(tmp_path, 0, "front")
    (tmp_path / "front.json").write_text(content)
    assert cli.main(["generate", *args, "--backend", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.glb")]) != 0
    err = capsys.readouterr().err
    assert "view 0" in err and message in err
