"""Bad input that used to be answered with a stray Python message gets a clear one."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.scene import CameraSpec, MeshPayload


def test_a_singular_camera_matrix_is_named_as_such():
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, 2] = 0.0  # a zero scale on the camera's local Z
    with pytest.raises(ValidationError, match="matrix_world is singular"):
        CameraSpec(matrix_world=matrix).validate()
    CameraSpec(matrix_world=np.eye(4, dtype=np.float32)).validate()


def test_a_dtype_given_as_a_list_is_named_as_such():
    mesh = MeshPayload(vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.uint32))
    frames = codec.encode(m.StageResult(stage="nerf", index=0, mesh=mesh, job_id="j", seq=1))
    header = msgpack.unpackb(frames[0], raw=False)
    header["body"]["mesh"]["vertices"]["dtype"] = ["<f4"]
    frames[0] = msgpack.packb(header, use_bin_type=True)
    with pytest.raises(ValidationError, match=r"vertices.dtype must be a type string such as '<f4', got list"):
        codec.decode(frames)
