"""A request holds only the fields the protocol defines: the backend refuses any other field by name
(a typo such as `sede` for `seed` used to be ignored, and the job ran with seed 0), while clients read
replies and events leniently, so that a later minor version may add fields to them."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
import zmq
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import INVALID_MESSAGE, ValidationError
from dreampolish.protocol.frames import FrameWriter
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec, PictureView
from dreampolish.protocol.payloads import CAMERA_FIELDS, MESH_FIELDS, SPEC_FIELDS, mesh_to_wire, spec_to_wire
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import CameraSpec, MeshPayload, TexturePayload

from tests.support.pipelines import png_rgb, running_backend


def _mesh(with_lod: bool = True) -> MeshPayload:
    """A mesh with every optional field set: its one face as a polygon too (face_sizes, face_corners) and a
    level of detail."""
    return MeshPayload(
        vertices=np.eye(3, dtype=np.float32), faces=np.array([[0, 1, 2]], np.uint32),
        uvs=np.zeros((1, 3, 2), np.float32), normals=np.eye(3, dtype=np.float32),
        colors=np.ones((3, 3), np.float32), textures=[TexturePayload("base_color", png=png_rgb(2, 2, (1, 2, 3)))],
        face_sizes=np.array([3], np.uint32), face_corners=np.array([0, 1, 2], np.uint32),
        lods=[_mesh(with_lod=False)] if with_lod else [])


def _full_spec() -> JobSpec:
    return JobSpec("a vase", negative_prompt="blur", seed=3, preset="tiny", mode="geometry", stages=["dmtet"],
                   pause_after=["dmtet"], options={"nerf.steps": 3}, cameras=[CameraSpec(np.eye(4, dtype=np.float32))],
                   input_mesh=_mesh(), image=ReferenceImage(array=np.zeros((16, 16, 4), np.uint8)),
                   mask=RefineMask(np.ones(3, np.float32), feather=0.1, prompt="brass", negative_prompt="rust"),
                   udim_tiles=[1001, 1002],
                   views=[PictureView(ReferenceImage(array=np.zeros((16, 16, 4), np.uint8)),
                                      CameraSpec(np.eye(4, dtype=np.float32), name="side"))])


def _with(msg: m.Message, edit) -> list[bytes]:
    frames = [bytes(f) for f in codec.encode(msg)]
    header = msgpack.unpackb(frames[0], raw=False)
    edit(header)
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def _requests() -> list[m.Message]:
    """Every request as the Python client (and the add-on, which vendors it) builds it, all fields set."""
    return [m.Hello(client="x"), m.Submit(spec=_full_spec()), m.Cancel(job_id="j"), m.Resume(mesh=_mesh(), job_id="j"),
            m.Resume(job_id="j"), m.Attach(last_seq=2, job_id="j"), m.ListJobs(page="p", limit=3),
            m.DeleteJob(job_id="j"), m.FetchResult(first=1, job_id="j"), m.Ping()]


def test_every_request_the_client_sends_holds_only_known_fields():
    for request in _requests():
        frames = [bytes(f) for f in codec.encode(request)]
        body = msgpack.unpackb(frames[0], raw=False)["body"]
        assert set(body) <= set(type(request).BODY_FIELDS), request.TYPE
        assert type(codec.decode(frames)) is type(request)
    w = FrameWriter()
    assert set(spec_to_wire(_full_spec(), w)) == set(SPEC_FIELDS)
    assert set(mesh_to_wire(_mesh(), w)) == set(MESH_FIELDS)
    assert set(spec_to_wire(_full_spec(), w)["cameras"][0]) == set(CAMERA_FIELDS)


@pytest.mark.parametrize(("where", "edit"), [
    ("spec", lambda h: h["body"]["spec"].update(sede=7)),
    ("submit's body", lambda h: h["body"].update(priority=1)),
    (r"spec.cameras\[0\]", lambda h: h["body"]["spec"]["cameras"][0].update(fov=40.0)),
    ("spec.input_mesh", lambda h: h["body"]["spec"]["input_mesh"].update(scale=2.0)),
    (r"spec.input_mesh.textures\[0\]", lambda h: h["body"]["spec"]["input_mesh"]["textures"][0].update(srgb=True)),
    ("spec.image", lambda h: h["body"]["spec"]["image"].update(mask=True)),
    ("spec.mask", lambda h: h["body"]["spec"]["mask"].update(radius=0.2)),
    (r"spec.views\[0\]", lambda h: h["body"]["spec"]["views"][0].update(depth=1)),
    (r"spec.views\[0\].camera", lambda h: h["body"]["spec"]["views"][0]["camera"].update(fov=40.0)),
    (r"spec.views\[0\].image", lambda h: h["body"]["spec"]["views"][0]["image"].update(mask=True)),
])
def test_an_unknown_field_in_a_submit_is_refused_by_name(where, edit):
    frames = _with(m.Submit(spec=_full_spec()), edit)
    with pytest.raises(ValidationError, match=rf"^{where} has a field this backend does not know: '\w+'"):
        codec.decode(frames)


def test_an_unknown_field_in_resumes_mesh_or_another_request_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"^resume.mesh has a field this backend does not know: 'frame'"):
        codec.decode(_with(m.Resume(mesh=_mesh(), job_id="j"), lambda h: h["body"]["mesh"].update(frame="world")))
    with pytest.raises(ValidationError, match=r"^attach's body has a field this backend does not know: 'last'"
                                               r" \(its fields: last_seq\)"):
        codec.decode(_with(m.Attach(job_id="j"), lambda h: h["body"].update(last=3)))
    # Replies and events are read leniently: a backend of a later minor version may add fields to them.
    welcome = codec.decode(_with(m.Welcome(presets=["tiny"]), lambda h: h["body"].update(gpu_hours=3)))
    assert isinstance(welcome, m.Welcome) and welcome.presets == ["tiny"]
    result = codec.decode(_with(m.StageResult(stage="nerf", index=1, mesh=_mesh(), job_id="j", seq=1),
                                lambda h: h["body"]["mesh"].update(lod=0)))
    assert isinstance(result, m.StageResult) and result.mesh.num_faces == 1


def test_the_backend_answers_an_unknown_submit_field_with_an_error_naming_it(tmp_path):
    spec = dataclasses.replace(_full_spec(), mode="generate", stages=None, pause_after=[], options={},
                               input_mesh=None, image=None)
    with running_backend(tmp_path) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(server.endpoint)
        sock.send_multipart(_with(m.Submit(spec=spec, msg_id="s-1"), lambda h: h["body"]["spec"].update(foo=1)))
        assert sock.poll(5000)
        reply = codec.decode(sock.recv_multipart())
        assert isinstance(reply, m.Error) and reply.code == INVALID_MESSAGE and reply.re == "s-1"
        assert "'foo'" in reply.message and "spec" in reply.message
        assert server.manager.list_page("", True)[0] == []  # nothing was queued
        sock.close()
