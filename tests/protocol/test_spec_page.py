"""The spec page (protocol/README.md) and the code describe the same messages and fields."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import msgpack
import numpy as np
from dreampolish.protocol import PROTOCOL_VERSION, codec, payloads
from dreampolish.protocol import messages as m
from dreampolish.protocol.frames import FrameWriter
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec, PictureView
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import CameraSpec, MeshPayload, TexturePayload

PAGE = (Path(m.__file__).parent / "README.md").read_text()
COMMON = {"msg_id", "re", "job_id", "seq"}


def sections() -> dict[str, str]:
    parts = re.split(r"^### `(\w+)`\s*$", PAGE, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def test_page_and_code_list_the_same_message_types():
    assert set(sections()) == set(m.MESSAGE_TYPES)


def test_every_body_field_is_documented_in_its_section():
    for name, text in sections().items():
        fields = {f.name for f in dataclasses.fields(m.MESSAGE_TYPES[name])} - COMMON
        missing = {f for f in fields if f"`{f}`" not in text}
        assert not missing, f"{name}: undocumented fields {missing}"


def test_page_states_the_current_version_and_has_a_changelog_entry_for_it():
    assert f"Protocol version **{PROTOCOL_VERSION}**" in PAGE
    assert re.search(rf"^- \*\*{re.escape(PROTOCOL_VERSION)}\*\*", PAGE, flags=re.M)


def test_job_states_are_documented():
    for state in payloads.JOB_STATES:
        assert f"`{state}`" in PAGE


# -- both directions, against the keys actually on the wire -------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def _mesh() -> MeshPayload:
    return MeshPayload(
        vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.uint32),
        uvs=np.zeros((1, 3, 2), np.float32), normals=np.zeros((3, 3), np.float32),
        colors=np.zeros((3, 4), np.float32),
        textures=[TexturePayload("base_color", png=PNG, tile=1001),
                  TexturePayload("normal", array=np.zeros((2, 2, 3), np.float16))],
    )


def _spec() -> JobSpec:
    return JobSpec("a vase", stages=["reference"], pause_after=["reference"], options={"nerf.steps": 3},
                   cameras=[CameraSpec(np.eye(4, dtype=np.float32))], input_mesh=_mesh(),
                   image=ReferenceImage(array=np.zeros((16, 16, 4), np.uint8)),
                   mask=RefineMask(np.ones(3, np.float32), feather=0.1), udim_tiles=[1001],
                   views=[PictureView(ReferenceImage(array=np.zeros((16, 16, 4), np.uint8)),
                                      CameraSpec(np.eye(4, dtype=np.float32)))])


def _full(cls: type) -> m.Message:
    """An instance of message type `cls` with every optional field present."""
    event = {"job_id": "j", "seq": 1}
    info = payloads.JobInfo("j", "done", "a vase", created_unix=1.0, stages_done=["reference"], error="")
    result = m.StageResult(stage="nerf", index=1, mesh=_mesh(), **event)
    examples = {
        m.Hello: dict(client="test"), m.Submit: dict(spec=_spec()), m.Resume: dict(mesh=_mesh(), job_id="j"),
        m.Attach: dict(last_seq=3, job_id="j"), m.FetchResult: dict(first=0, job_id="j"),
        m.Welcome: dict(backend_version="1", devices=["cpu"], presets=["tiny"], default_preset="tiny", models=["m"]),
        m.Progress: dict(stage="nerf", step=1, total=2, losses={"rgb": 1.0}, preview_png=PNG, **event),
        m.StageResult: dict(stage="nerf", index=1, mesh=_mesh(), **event),
        m.Paused: dict(stage="nerf", **event), m.Resumed: dict(with_edited_mesh=True, **event),
        m.Failed: dict(code="internal_error", message="x", **event), m.JobList: dict(jobs=[info]),
        m.Result: dict(state="done", stage_results=[result], more_from=0, job_id="j"),
        m.Error: dict(code="invalid_message", message="x"),
    }
    return cls(**examples.get(cls, {}))


def _wire(msg: m.Message) -> dict:
    return msgpack.unpackb(bytes(codec.encode(msg)[0]), raw=False)


def _keys(body: dict) -> set[str]:
    """A body's keys and those of the maps in its lists (job_list's jobs, result's stage_results);
    payloads (mesh, spec) and free maps (losses, limits) are documented on their own."""
    keys = set(body)
    for value in body.values():
        if isinstance(value, list):
            keys |= {k for item in value if isinstance(item, dict) for k in item}
    return keys


def _documented(text: str, start: str, stops: tuple[str, ...]) -> set[str]:
    """Backticked names in `text` from `start` up to the first of `stops`, leaving out values given in
    parentheses (states, roles, fits: `state` (`queued`, ...))."""
    if start not in text:
        return set()
    part = text.split(start, 1)[1]
    for stop in stops:
        part = part.split(stop, 1)[0]
    while re.search(r"\([^()]*\)", part):
        part = re.sub(r"\([^()]*\)", "", part)
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", part))


def test_body_keys_on_the_wire_are_exactly_those_the_page_documents():
    for name, text in sections().items():
        wire = _keys(_wire(_full(m.MESSAGE_TYPES[name]))["body"])
        page = _documented(text, "Body:", ("Reply:", "Codes:", "Send `", "Previews travel", "Chains:", "Indices:"))
        assert wire == page, f"{name}: on the wire only {sorted(wire - page)}, on the page only {sorted(page - wire)}"


def test_header_keys_on_the_wire_are_the_header_table():
    table = PAGE.split("Header fields:", 1)[1].split("\n\n", 2)[1]
    page = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert set(_wire(_full(m.Cancel))) == page == {"v", "type", "id", "re", "job", "seq", "body"}


def _payload(title: str) -> set[str]:
    text = re.split(rf"\*\*{title}\*\*[^—]*—", PAGE, maxsplit=1)[1].split("\n\n", 1)[0]
    return _documented(" " + text, " ", ("Stage names:",))


def test_payload_keys_on_the_wire_are_exactly_those_the_page_documents():
    w = FrameWriter()
    mesh = payloads.mesh_to_wire(_mesh(), w)
    spec = payloads.spec_to_wire(_spec(), w)
    wire = {
        "mesh": set(mesh), "texture": set().union(*(set(t) for t in mesh["textures"])),
        "camera": set(spec["cameras"][0]), "spec": set(spec), "view": set(spec["views"][0]),
    }
    for title, keys in wire.items():
        assert keys == _payload(title), f"{title}: wire {sorted(keys)} page {sorted(_payload(title))}"


def test_the_page_and_the_camera_code_describe_lens_shift_alike():
    from dreampolish.protocol import scene

    # Blender's view plane (render/cameras.py blender_intrinsics): shift_px = shift * the fitted side.
    wording = "fraction of the fitted image side (the width for HORIZONTAL, the height for VERTICAL, the larger side for AUTO)"
    page = PAGE.split("**camera** —", 1)[1].split("\n\n", 1)[0]
    field_doc = Path(scene.__file__).read_text().split("shift: tuple[float, float]", 1)[1].split('"""')[1]
    for text in (page, field_doc, scene.__doc__ or ""):
        assert wording in " ".join(text.split()), text


def test_every_submit_field_is_in_the_table_with_the_default_the_decoder_gives_it():
    import json

    import pytest
    from dreampolish.protocol.errors import ValidationError
    from dreampolish.protocol.frames import FrameReader

    table = PAGE.split("Submit fields, their types and defaults", 1)[1].split("\n\n", 2)[1]
    rows = {m_.group(1): [c.strip() for c in m_.group(2).split("|")]
            for m_ in re.finditer(r"^\| `(\w+)` \|(.*)\|$", table, flags=re.M)}
    assert list(rows) == list(payloads.SPEC_FIELDS)
    decoded = payloads.spec_from_wire({"prompt": "x"}, FrameReader([]))
    for name, (_type, required, default, _meaning) in rows.items():
        if required == "yes":
            with pytest.raises(ValidationError, match=f"'{name}' is required"):
                payloads.spec_from_wire({}, FrameReader([]))
            continue
        value = None if default == "nil" else json.loads(default.strip("`"))
        assert getattr(decoded, name) == value, name
