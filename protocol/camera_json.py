"""A camera as a JSON file: exactly the CameraSpec fields (matrix_world as 4 rows of 4, lens_mm, sensor_width_mm,
sensor_height_mm, sensor_fit, resolution [w, h], shift [x, y], name), as `dreampolish-backend render --camera`
and `dreampolish generate --view PICTURE CAMERA` read it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .errors import ValidationError
from .scene import CameraSpec


def load_camera_json(path: Path) -> CameraSpec:
    """A CameraSpec from a JSON file holding exactly its fields (unknown fields are an error)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"cannot read camera file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError(f"camera file {path} must hold a JSON object")
    known = {f.name for f in dataclasses.fields(CameraSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"camera file {path} has unknown fields {unknown}; expected some of {sorted(known)}")
    if "matrix_world" not in data:
        raise ValidationError(f"camera file {path} has no matrix_world")
    try:
        fields = dict(data)
        fields["matrix_world"] = np.asarray(data["matrix_world"], dtype=np.float32)
        if "resolution" in fields:
            fields["resolution"] = tuple(int(v) for v in fields["resolution"])
        if "shift" in fields:
            fields["shift"] = tuple(float(v) for v in fields["shift"])
        spec = CameraSpec(**fields)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"camera file {path}: {exc}") from exc
    return spec.validate()


def save_camera_json(spec: CameraSpec, path: Path) -> Path:
    """Write a CameraSpec in the format load_camera_json reads."""
    data = dataclasses.asdict(spec)
    data["matrix_world"] = np.asarray(spec.matrix_world, dtype=np.float64).tolist()
    data["resolution"] = [int(v) for v in spec.resolution]
    data["shift"] = [float(v) for v in spec.shift]
    Path(path).write_text(json.dumps(data, indent=2))
    return Path(path)
