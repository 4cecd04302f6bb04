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


def test_a_column_major_camera_matrix_is_refused_naming_rows_and_columns():
    # What three.js or glm hand out: the translation in the last row. It used to be accepted at submit and
    # fail the job later with "contains NaN or infinite values", though every value was finite.
    from dreampolish.protocol.job import JobSpec, validate_spec

    row_major = np.eye(4, dtype=np.float32)
    row_major[:3, 3] = (0.0, -3.8, 1.2)
    CameraSpec(matrix_world=row_major).validate()
    with pytest.raises(ValidationError, match=r"last row must be \[0, 0, 0, 1\].*looks transposed"):
        CameraSpec(matrix_world=np.ascontiguousarray(row_major.T)).validate()
    projective = row_major.copy()
    projective[3, 2] = 0.5
    with pytest.raises(ValidationError, match=r"last row must be \[0, 0, 0, 1\], got \[0.0, 0.0, 0.5, 1.0\]$"):
        CameraSpec(matrix_world=projective).validate()
    with pytest.raises(ValidationError, match="looks transposed"):
        validate_spec(JobSpec(prompt="a vase", cameras=[CameraSpec(matrix_world=np.ascontiguousarray(row_major.T))]))


def test_a_dtype_given_as_a_list_is_named_as_such():
    mesh = MeshPayload(vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.uint32))
    frames = codec.encode(m.StageResult(stage="nerf", index=0, mesh=mesh, job_id="j", seq=1))
    header = msgpack.unpackb(frames[0], raw=False)
    header["body"]["mesh"]["vertices"]["dtype"] = ["<f4"]
    frames[0] = msgpack.packb(header, use_bin_type=True)
    with pytest.raises(ValidationError, match=r"vertices.dtype must be a type string such as '<f4', got a list"):
        codec.decode(frames)
