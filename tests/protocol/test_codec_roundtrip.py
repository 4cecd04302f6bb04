"""Every message type survives encode -> frames -> decode, arrays included, under hypothesis."""

from __future__ import annotations

import dataclasses
import re

import msgpack
import numpy as np
import pytest
from dreampolish.protocol import PROTOCOL_VERSION, codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import DecodeError, LimitExceeded, ValidationError, VersionMismatch
from dreampolish.protocol.job import JOB_MODES, JobSpec
from dreampolish.protocol.payloads import JOB_STATES, JobInfo
from dreampolish.protocol.scene import SENSOR_FITS, CameraSpec, MeshPayload, TexturePayload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(alphabet="abcdef0123456789-:", min_size=1, max_size=20)
job_ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=20)
"""Job ids name a folder of the job store, so the wire refuses separators and colons in them (names.py)."""
names = st.text(max_size=30)
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
stages = st.sampled_from(("reference", "nerf", "neus", "dmtet", "polish", "texture", "export", "toy_2"))


def f32(shape) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shape, elements=finite)


@st.composite
def meshes(draw, min_faces: int = 1) -> MeshPayload:
    n = draw(st.integers(1, 40))
    k = draw(st.integers(min_faces, 40))
    faces = draw(hnp.arrays(np.uint32, (k, 3), elements=st.integers(0, n - 1)))
    textures = []
    if draw(st.booleans()):
        textures.append(TexturePayload("base_color", png=PNG + draw(st.binary(max_size=64))))
    if draw(st.booleans()):
        textures.append(
            TexturePayload(
                "normal", array=draw(hnp.arrays(np.float16, (4, 4, 3), elements=st.floats(-1, 1, width=16)))
            )
        )
    fields = {"normals": draw(st.none() | f32((n, 3))),
              "colors": draw(st.none() | f32((n, draw(st.sampled_from((3, 4)))))),
              "transform": draw(f32((4, 4))), "textures": textures}
    if n >= 3 and draw(st.booleans()):  # a polygon mesh: faces of 3 to 6 distinct corners
        sizes = draw(st.lists(st.integers(3, min(6, n)), min_size=min_faces, max_size=12))
        corners = [v for size in sizes for v in draw(st.permutations(range(n)))[:size]]
        return MeshPayload.from_polygons(draw(f32((n, 3))), np.array(sizes, np.uint32), np.array(corners, np.uint32),
                                         draw(st.none() | f32((len(corners), 2))), **fields)
    return MeshPayload(vertices=draw(f32((n, 3))), faces=faces, uvs=draw(st.none() | f32((k, 3, 2))), **fields)


@st.composite
def cameras(draw) -> CameraSpec:
    matrix = draw(f32((4, 4)))
    if abs(np.linalg.det(matrix[:3, :3].astype(np.float64))) < 1e-12:
        # A singular camera is refused with its own message (test_clear_messages.py); keep the draw's
        # translation and give it an invertible rotation-scale part.
        matrix[:3, :3] = np.diag(draw(hnp.arrays(np.float32, 3, elements=st.floats(0.125, 64.0, width=32))))
    matrix[3] = (0.0, 0.0, 0.0, 1.0)  # an affine camera-to-world: any other last row is refused (rows, not columns)
    return CameraSpec(
        matrix_world=matrix,
        lens_mm=draw(st.floats(1, 500)),
        sensor_width_mm=draw(st.floats(1, 100)),
        sensor_height_mm=draw(st.floats(1, 100)),
        sensor_fit=draw(st.sampled_from(SENSOR_FITS)),
        resolution=(draw(st.integers(1, 4096)), draw(st.integers(1, 4096))),
        shift=(draw(st.floats(-1, 1)), draw(st.floats(-1, 1))),
        name=draw(names),
    )


@st.composite
def specs(draw) -> JobSpec:
    cams = draw(st.lists(cameras(), max_size=3))
    return JobSpec(
        prompt=draw(st.text(max_size=200)),
        negative_prompt=draw(st.text(max_size=50)),
        seed=draw(st.integers(0, 2**63 - 1)),
        preset=draw(names),
        mode=draw(st.sampled_from(JOB_MODES)),
        stages=draw(st.none() | st.lists(stages, max_size=3)),
        pause_after=draw(st.lists(stages, max_size=2)),
        options=draw(
            st.dictionaries(names, st.booleans() | st.integers(-1000, 1000) | finite | names, max_size=4)
        ),
        cameras=cams,
        reference_camera=draw(st.integers(0, max(len(cams) - 1, 0))),
        input_mesh=draw(st.none() | meshes()),
    )


common = {"msg_id": ids, "re": st.just("") | ids, "job_id": st.just("") | job_ids}
event_common = {**common, "job_id": job_ids, "seq": st.integers(1, 10**9)}
job_infos = st.builds(
    JobInfo,
    job_id=job_ids,
    state=st.sampled_from(JOB_STATES),
    prompt=st.text(max_size=50),
    created_unix=st.floats(0, 2e9),
    last_seq=st.integers(0, 10**6),
    stages_done=st.lists(stages, max_size=4),
    error=st.text(max_size=50),
)
stage_results = st.builds(
    m.StageResult, stage=stages, index=st.integers(0, 6), mesh=meshes(min_faces=0), **event_common
)

STRATEGIES: dict[type[m.Message], st.SearchStrategy[m.Message]] = {
    m.Hello: st.builds(m.Hello, client=names, **common),
    m.Submit: st.builds(m.Submit, spec=specs(), **common),
    m.Cancel: st.builds(m.Cancel, **common),
    m.Resume: st.builds(m.Resume, mesh=st.none() | meshes(), **common),
    m.Attach: st.builds(m.Attach, last_seq=st.integers(0, 10**9), **common),
    m.ListJobs: st.builds(m.ListJobs, page=names, limit=st.integers(0, 10_000), **common),
    m.DeleteJob: st.builds(m.DeleteJob, **common),
    m.FetchResult: st.builds(m.FetchResult, first=st.integers(0, 100), **common),
    m.Ping: st.builds(m.Ping, **common),
    m.Welcome: st.builds(
        m.Welcome,
        backend_version=names,
        devices=st.lists(names, max_size=3),
        presets=st.lists(names, max_size=3),
        default_preset=names,
        models=st.lists(names, max_size=3),
        max_queued_per_client=st.integers(0, 10**6),
        max_queued_total=st.integers(0, 10**6),
        **common,
    ),
    m.Accepted: st.builds(m.Accepted, queue_position=st.integers(0, 1000), **common),
    m.Progress: st.builds(
        m.Progress,
        stage=stages,
        step=st.integers(0, 10**6),
        total=st.integers(0, 10**6),
        losses=st.dictionaries(names, finite, max_size=4),
        preview_png=st.none() | st.binary(max_size=64).map(lambda b: PNG + b),
        **event_common,
    ),
    m.StageResult: stage_results,
    m.Paused: st.builds(m.Paused, stage=stages, **event_common),
    m.Resumed: st.builds(m.Resumed, with_edited_mesh=st.booleans(), **event_common),
    m.Done: st.builds(m.Done, **event_common),
    m.Failed: st.builds(m.Failed, code=names, message=st.text(max_size=200), **event_common),
    m.Cancelled: st.builds(m.Cancelled, **event_common),
    m.JobList: st.builds(m.JobList, jobs=st.lists(job_infos, max_size=4), next_page=names, **common),
    m.Result: st.builds(
        m.Result,
        state=st.sampled_from(JOB_STATES),
        stage_results=st.lists(stage_results, max_size=3),
        more_from=st.integers(0, 100),
        **common,
    ),
    m.Error: st.builds(m.Error, code=names, message=st.text(max_size=200), **common),
    m.Pong: st.builds(m.Pong, **common),
}


def assert_same(a: object, b: object, path: str = "msg") -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=0), path
    else:
        assert a == b, path


def test_every_message_type_has_a_strategy():
    assert set(STRATEGIES) == set(m.MESSAGE_TYPES.values())


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.TYPE)
def test_round_trip(cls):
    @SETTINGS
    @given(STRATEGIES[cls])
    def check(msg: m.Message) -> None:
        frames = [bytes(f) for f in codec.encode(msg)]  # as they arrive from a socket
        decoded = codec.decode(frames)
        if isinstance(msg, m.Result):
            for s in msg.stage_results:  # job id and seq of nested results come from the reply and its rows
                s.job_id, s.msg_id, s.re = msg.job_id, "", ""
        assert_same(msg, decoded)

    check()


def test_arrays_decode_without_copy():
    mesh = MeshPayload(np.arange(30, dtype=np.float32).reshape(10, 3), np.array([[0, 1, 2]], np.uint32))
    frames = [bytearray(f) for f in codec.encode(m.Resume(mesh=mesh, job_id="j"))]
    decoded = codec.decode(frames)
    assert np.shares_memory(decoded.mesh.vertices, np.frombuffer(frames[1], np.uint8))


def test_unknown_header_fields_and_unknown_body_fields_of_events_are_tolerated():
    # A request's body may not hold an unknown field (tests/backend/test_unknown_fields.py); its header may.
    frames = codec.encode(m.Attach(job_id="j", last_seq=7))
    header = msgpack.unpackb(frames[0])
    header["future_field"] = [1, 2]
    decoded = codec.decode([msgpack.packb(header), *frames[1:]])
    assert isinstance(decoded, m.Attach) and decoded.last_seq == 7
    frames = codec.encode(m.Paused(stage="nerf", job_id="j", seq=2))
    header = msgpack.unpackb(frames[0])
    header["body"]["also_new"] = {"x": 1}
    decoded = codec.decode([msgpack.packb(header), *frames[1:]])
    assert isinstance(decoded, m.Paused) and decoded.stage == "nerf"


def _with_header(frames, **changes):
    header = msgpack.unpackb(frames[0])
    for key, value in changes.items():
        if key == "body":
            header["body"].update(value)
        else:
            header[key] = value
    return [msgpack.packb(header), *frames[1:]]


def test_other_major_version_is_refused_naming_both():
    with pytest.raises(VersionMismatch, match=r"2\.0.*" + re.escape(PROTOCOL_VERSION)):
        codec.decode(_with_header(codec.encode(m.Hello()), v="2.0"))
    assert isinstance(codec.decode(_with_header(codec.encode(m.Hello()), v="1.9")), m.Hello)


def test_limits_are_enforced_on_decode():
    spec = JobSpec(prompt="x" * 2001)
    with pytest.raises(LimitExceeded):
        codec.decode(codec.encode(m.Submit(spec=spec)))
    mesh = MeshPayload(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.uint32))
    frames = codec.encode(m.Resume(mesh=mesh))
    huge = {
        "mesh": {
            "vertices": {"frame": 1, "dtype": "<f4", "shape": [10**12, 3]},
            "faces": {"frame": 2, "dtype": "<u4", "shape": [1, 3]},
        }
    }
    with pytest.raises(LimitExceeded):
        codec.decode(_with_header(frames, body=huge))
    with pytest.raises(LimitExceeded):
        codec.decode([frames[0]] + [b""] * 64)


@pytest.mark.parametrize(
    "body, error",
    [
        ({"mesh": {"vertices": {"frame": 9, "dtype": "<f4", "shape": [3, 3]}}}, DecodeError),
        ({"mesh": {"vertices": {"frame": 1, "dtype": "|O", "shape": [3, 3]}}}, ValidationError),
        (
            {
                "mesh": {
                    "vertices": {"frame": 1, "dtype": "<f4", "shape": [4, 3]},
                    "faces": {"frame": 2, "dtype": "<u4", "shape": [1, 3]},
                }
            },
            DecodeError,
        ),
        (
            {
                "mesh": {
                    "vertices": {"frame": 1, "dtype": "<f8", "shape": [3, 3]},
                    "faces": {"frame": 2, "dtype": "<u4", "shape": [1, 3]},
                }
            },
            (ValidationError, DecodeError),
        ),
        (
            {
                "mesh": {
                    "vertices": {"frame": 1, "dtype": "<f4", "shape": [3, 3]},
                    "faces": {"frame": 2, "dtype": "<u4", "shape": [1, 3]},
                    "textures": "x",
                }
            },
            ValidationError,
        ),
        ({"mesh": 5}, ValidationError),
    ],
)
def test_bad_array_references_raise_typed_errors(body, error):
    mesh = MeshPayload(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.uint32))
    with pytest.raises(error):
        codec.decode(_with_header(codec.encode(m.Resume(mesh=mesh)), body=body))


def test_faces_pointing_past_the_vertices_are_rejected():
    mesh = MeshPayload(np.zeros((3, 3), np.float32), np.array([[0, 1, 7]], np.uint32))
    with pytest.raises(ValidationError, match="faces"):
        codec.decode(codec.encode(m.Resume(mesh=mesh)))


def test_diverged_losses_travel_as_nan_and_infinity():
    msg = m.Progress(
        stage="nerf", step=1, total=2, losses={"sds": float("nan"), "rgb": float("inf")}, job_id="j", seq=1
    )
    decoded = codec.decode(codec.encode(msg))
    assert np.isnan(decoded.losses["sds"]) and decoded.losses["rgb"] == float("inf")
