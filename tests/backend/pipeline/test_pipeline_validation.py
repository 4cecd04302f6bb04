"""One validation of a request: the wire, the protocol's validate_spec, DreamPolishPipeline.check and the
scripted test pipeline refuse the same requests, and inputs that used to pass submit and then fail inside
a stage are refused at submit with a message that names the problem."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import RequestRejected
from dreampolish.protocol.errors import ProtocolError, ValidationError
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import ScriptedPipeline, production_client
from tests.support.recording import box_payload


def _flat_mesh() -> MeshPayload:
    """Vertices spread along a line: an extent, but every face has zero area."""
    v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], np.float32)
    return MeshPayload(vertices=v, faces=np.array([[0, 1, 2], [1, 2, 3]], np.uint32))


def _zero_scale_mesh() -> MeshPayload:
    """A fine box whose transform scales it to a point: nothing left once placed in the world."""
    mesh = box_payload()
    mesh.transform = np.diag([0.0, 0.0, 0.0, 1.0]).astype(np.float32)
    return mesh


def _overflowing_mesh() -> MeshPayload:
    """Finite vertices and transform whose product is not finite."""
    mesh = box_payload()
    mesh.vertices = (mesh.vertices * np.float32(1e30)).astype(np.float32)
    mesh.transform = np.diag([1e30, 1e30, 1e30, 1.0]).astype(np.float32)
    return mesh


REFUSED_BY_EVERY_PIPELINE = [
    (JobSpec("a vase", seed=-1), r"seed must be an integer in \[0, 2\^63\)"),
    (JobSpec("a vase", seed=2**63), r"seed must be an integer in \[0, 2\^63\)"),
    (JobSpec("a box", mode="geometry", input_mesh=_flat_mesh()), "faces all have zero area"),
    (JobSpec("a box", mode="texture", input_mesh=_zero_scale_mesh()), "no extent"),
    (JobSpec("a box", mode="geometry", input_mesh=_overflowing_mesh()), "not finite once its transform"),
    (JobSpec("a vase", input_mesh=box_payload()), "takes no input_mesh"),
    (JobSpec("a box", mode="geometry"), "input_mesh is missing"),
    (JobSpec("  "), "prompt is empty"),
]


@pytest.mark.parametrize(("spec", "message"), REFUSED_BY_EVERY_PIPELINE)
def test_the_protocol_the_pipeline_and_the_scripted_pipeline_refuse_alike(spec, message):
    for check in (validate_spec, DreamPolishPipeline().check, ScriptedPipeline().check):
        with pytest.raises(ValidationError, match=message):
            check(spec)


def test_the_wire_refuses_the_seeds_the_pipeline_refuses():
    frames = codec.encode(m.Submit(spec=JobSpec("a vase", seed=-1)))
    with pytest.raises(ProtocolError, match=r"seed must be an integer in \[0, 2\^63\)"):
        codec.decode(frames)
    # The largest seed the pipeline accepts goes through the wire unchanged.
    top = codec.decode(codec.encode(m.Submit(spec=JobSpec("a vase", seed=2**63 - 1))))
    assert top.spec.seed == 2**63 - 1
    DreamPolishPipeline().check(top.spec)


@pytest.mark.parametrize(("options", "message"), [
    ({"model_set": "no-such-models"}, "model_set 'no-such-models' is not one of"),
    ({"preview_size": 0}, r"preview_size .*\[16, 2048\]"),
    ({"reference.size": 0}, r"reference.size .*\[32, 2048\]"),
])
def test_preset_values_that_would_fail_inside_a_stage_are_refused_at_check(options, message):
    with pytest.raises(ValidationError, match=message):
        DreamPolishPipeline().check(JobSpec("a vase", preset="tiny", options=options))


def test_a_good_refine_request_still_passes():
    spec = JobSpec("a box", preset="tiny", mode="geometry", input_mesh=box_payload())
    DreamPolishPipeline().check(spec)
    ScriptedPipeline().check(dataclasses.replace(spec, options={}))


@pytest.mark.timeout(120)
def test_the_real_server_refuses_them_at_submit_and_keeps_serving(tmp_path):
    with production_client(tmp_path) as client:
        for spec, message in [
            (JobSpec("a vase", seed=-1), "seed must be an integer"),
            (JobSpec("a vase", options={"model_set": "no-such-models"}), "model_set"),
            (JobSpec("a vase", options={"preview_size": 0}), "preview_size"),
            (JobSpec("a box", mode="geometry", input_mesh=_flat_mesh()), "zero area"),
            (JobSpec("a box", mode="texture", input_mesh=_zero_scale_mesh()), "no extent"),
        ]:
            with pytest.raises(RequestRejected, match=message):
                client.submit(spec)
        assert client.list_jobs() == []  # nothing was queued
