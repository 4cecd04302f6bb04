"""Option values have ranges, and file-name options stay inside the job folder: through apply_options,
saved presets, the pipeline's request check and the real server."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from dreampolish.backend.config_fields import FILE_NAME_KEY, RANGE_KEY
from dreampolish.backend.config_values import apply_options
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.presets import PRESETS, get_preset, load_preset
from dreampolish.protocol.client import RequestRejected
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import production_client

REFUSED = [
    ({"nerf.steps": 1e9}, r"nerf\.steps must be in \[1, 200000\], got 1000000000"),
    ({"nerf.steps": -5}, r"nerf\.steps must be in \[1, 200000\], got -5"),
    ({"reference.size": 100000}, r"reference\.size must be in \[32, 2048\], got 100000"),
    ({"texture.atlas_size": 65536}, r"texture\.atlas_size must be in \[16, 8192\]"),
    ({"nerf.density.grid.log2_hashmap_size": 40}, r"nerf\.density\.grid\.log2_hashmap_size must be in \[8, 24\]"),
    ({"guidance.text.timesteps.t_range": [0.5, 3.0]}, r"guidance\.text\.timesteps\.t_range must be in \[0, 1\], got 3\.0"),
    ({"polish.lr": float("inf")}, r"polish\.lr must be in \[0, 1\], got inf"),
    ({"export.glb_name": "../../other-job/state.json"}, r"export\.glb_name must be a plain file name"),
    ({"export.glb_name": "/tmp/result.glb"}, r"export\.glb_name must be a plain file name"),
    ({"export.glb_name": "result.glb\x00"}, r"export\.glb_name must be a plain file name"),
    ({"export.glb_name": "state.json"}, r"must end with '\.glb'"),
]


def _leaves(cfg, prefix=""):
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name], value


def _numbers(value):
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.parametrize("options, message", REFUSED)
def test_values_outside_a_fields_range_are_refused_naming_field_and_range(options, message):
    with pytest.raises(ValidationError, match=message):
        get_preset("tiny", options)


def test_every_numeric_field_has_a_range_and_every_preset_lies_inside_it():
    for name, make in PRESETS.items():
        for path, f, tp, value in _leaves(make()):
            text = str(tp)
            if "Literal" in text or not ("int" in text or "float" in text):
                continue
            assert RANGE_KEY in f.metadata, f"{path} ({text}) declares no range"
            lo, hi = f.metadata[RANGE_KEY]
            assert all(lo <= v <= hi for v in _numbers(value)), f"preset {name}: {path}={value} outside [{lo}, {hi}]"
    glb = dataclasses.fields(type(get_preset("standard").export))
    assert any(f.name == "glb_name" and FILE_NAME_KEY in f.metadata for f in glb)


def test_the_edges_of_a_range_are_accepted():
    preset = apply_options(get_preset("tiny"), {"nerf.steps": 200_000, "reference.size": 32, "preview_every": 0})
    assert (preset.nerf.steps, preset.reference.size) == (200_000, 32)


def test_a_saved_preset_is_held_to_the_same_ranges(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"nerf": {"steps": 10**9}}))
    with pytest.raises(ValidationError, match=r"nerf\.steps must be in \[1, 200000\]"):
        load_preset(path)


def test_the_pipeline_check_refuses_out_of_range_options():
    with pytest.raises(ValidationError, match=r"reference\.size must be in"):
        DreamPolishPipeline().check(JobSpec("a teapot", preset="tiny", options={"reference.size": 100000}))


def test_the_real_server_answers_invalid_message_and_keeps_serving(tmp_path):
    with production_client(tmp_path) as client:
        for options, message in REFUSED:
            if any(isinstance(v, list) for v in options.values()):
                continue  # the wire carries scalar options only
            with pytest.raises(RequestRejected, match=message) as refused:
                client.submit(JobSpec("a vase", preset="tiny", options=options))
            assert refused.value.code == "invalid_message"
        with pytest.raises(RequestRejected, match="header field 'job'") as refused:
            client.cancel("../../etc")
        assert refused.value.code == "invalid_message"
        assert client.list_jobs() == []  # nothing was queued, so nothing was written
