"""Malformed messages for the fuzz test and bench/hostile_input.py: well-formed examples of every
request, and mutations of them (random frames, a bad header, an odd value anywhere in the body)."""

from __future__ import annotations

import random
import re

import msgpack
import numpy as np
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import CameraSpec, MeshPayload, TexturePayload

from tests.support.images import png_bytes, rgba


def valid_messages() -> list[list[bytes]]:
    mesh = MeshPayload(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.uint32))
    msgs = [
        m.Hello(client="fuzz"),
        m.Submit(spec=JobSpec("a cat", input_mesh=mesh, options={"test.steps": 1})),
        m.Resume(job_id="nope", mesh=mesh),
        m.Attach(job_id="nope", last_seq=3),
        m.Cancel(job_id="nope"),
        m.FetchResult(job_id="nope"),
    ]
    return [[bytes(f) for f in codec.encode(x)] for x in msgs]


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """One malformed variant of a valid message."""
    header = msgpack.unpackb(frames[0])
    choice = rng.randrange(14)
    if choice == 0:
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))]
    if choice == 1:
        return [msgpack.packb(rng.choice([1, "x", [1, 2], None, 3.5, b"\x00"]))]
    if choice == 2:
        header["v"] = rng.choice(["2.0", "0.1", 7, None, ""])
    elif choice == 3:
        header["type"] = rng.choice(["welcome", "done", "nope", 5, None, "stage_result", "x" * 500])
    elif choice == 4:
        return frames[:1]  # array frames missing
    elif choice == 5:
        return [frames[0], *frames[1:], *[b"\x00" * 8] * rng.randrange(1, 70)]
    elif choice == 6:
        return [frames[0][: rng.randrange(len(frames[0]))], *frames[1:]]  # truncated header
    elif choice == 7:
        header["body"] = rng.choice([None, 5, "x", [1], {"spec": 3}, {"mesh": {"vertices": 1}}])
    else:
        # Corrupt one field deep in the body: wrong types, huge declared sizes, bad references.
        body = header.get("body") or {}
        target = body.get("spec", body)
        if isinstance(target.get("input_mesh"), dict):
            target = target["input_mesh"] if rng.random() < 0.5 else target
        if isinstance(target.get("mesh"), dict):
            target = target["mesh"]
        key = rng.choice(sorted(target) or ["x"])
        target[key] = rng.choice(
            [
                None,
                -1,
                2**70 if rng.random() < 0.1 else 2**31,
                "\u0000" * 3000,
                [[]],
                {"frame": 99, "dtype": "<f4", "shape": [3, 3]},
                {"frame": 1, "dtype": "<f4", "shape": [2**40, 2**20]},
                {"frame": 1, "dtype": "|O", "shape": [1]},
                {"frame": 1, "dtype": "<f4", "shape": [-3, 3]},
                {"frame": True, "dtype": "<f4"},
                float("nan"),
            ]
        )
    try:
        return [msgpack.packb(header), *frames[1:]]
    except (OverflowError, TypeError, ValueError):
        return [rng.randbytes(32)]


def every_request() -> list[list[bytes]]:
    """A well-formed example of every request, with every optional field filled in."""
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    mesh = MeshPayload(tri, np.array([[0, 1, 2]], np.uint32), uvs=np.zeros((1, 3, 2), np.float32),
                       normals=np.zeros((3, 3), np.float32), colors=np.ones((3, 3), np.float32),
                       transform=np.eye(4, dtype=np.float32),
                       textures=[TexturePayload(role="base_color", png=png_bytes(rgba(16, 16)))])
    camera = CameraSpec(matrix_world=np.eye(4, dtype=np.float32), resolution=(64, 64), name="front")
    msgs = [
        m.Submit(spec=JobSpec("a cat", negative_prompt="blur", seed=3, stages=["reference", "nerf"],
                              pause_after=["reference"], options={"test.steps": 1}, cameras=[camera])),
        m.Submit(spec=JobSpec("", image=ReferenceImage(png=png_bytes(rgba(20, 20))))),
        m.Submit(spec=JobSpec("", image=ReferenceImage(array=rgba(20, 20)))),
        m.Submit(spec=JobSpec("refine", mode="geometry", input_mesh=mesh)),
        m.Resume(job_id="nope", mesh=mesh),
        m.ListJobs(page="", limit=5),
        m.FetchResult(job_id="nope", first=1),
        m.Attach(job_id="nope", last_seq=2),
        m.DeleteJob(job_id="nope"),
        m.Ping(),
    ]
    return [[bytes(f) for f in codec.encode(x)] for x in msgs]


ODD_VALUES = [None, -1, 0, 2**31, 2**64 - 1, -2**63, "", "x" * 3000, "\u0000", [[]], [1, 2], ["a"], [[1, 2], [3]],
              {"a": 1}, {1: 2}, {}, 3.5, float("nan"), float("inf"), True, b"\x00\x01", {"frame": 99},
              {"frame": [1]}, {"frame": 1, "dtype": ["<f4"], "shape": 3}, {"frame": 1, "dtype": "<f4", "shape": [[3]]}]


def _places(node, path=()):
    """Every place in a header map (keys of maps, the first items of lists)."""
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node[:4]) if isinstance(node, list) else ()
    for key, value in items:
        yield from _places(value, (*path, key))


def mutate_anywhere(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """One value anywhere in the header (the body's nested maps and lists included) replaced by an odd
    one, or an odd key added to a map."""
    header = msgpack.unpackb(frames[0], strict_map_key=False)
    path = rng.choice([p for p in _places(header) if p and p[0] != "type"])
    node = header
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, dict) and rng.random() < 0.15:
        node[rng.choice(["extra", 1, None, 2.5])] = rng.choice(ODD_VALUES)
    else:
        node[path[-1]] = rng.choice(ODD_VALUES)
    try:
        return [msgpack.packb(header, use_bin_type=True), *frames[1:]]
    except (OverflowError, TypeError, ValueError):
        return [rng.randbytes(32)]


PYTHON_WORDS = re.compile(
    r"unhashable|has no attribute|not subscriptable|NoneType|positional argument|object is not|invalid literal|"
    r"'(list|dict|str|int|float|bool|bytes|tuple)' object|not supported between|could not convert|Traceback|"
    r"(TypeError|KeyError|ValueError|AttributeError|IndexError|OverflowError)\b|got (list|dict|str|int|float|bool|bytes)\b"
)


def malformed(rng: random.Random, base: list[list[bytes]]) -> list[bytes]:
    """One malformed message: an odd value anywhere (7 in 10), else a broken frame or header."""
    frames = rng.choice(base)
    return mutate_anywhere(rng, frames) if rng.random() < 0.7 else mutate(rng, frames)
