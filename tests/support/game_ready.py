"""A polished surface and its game-ready low mesh with the normal map baked from it, made by the backend's
own finish stage and bake (stages/finish.py, bake.bake_normal_map through the cage), saved as an .npz for
the add-on's render comparison (tests/addon/test_game_ready.py), which runs in Blender's Python without the
backend's packages:

    .venv/bin/python -m tests.support.game_ready OUT.npz [FACES]

The polished surface is a torus with 20 ripples around its ring (6 % of the tube's radius): detail a low
mesh of FACES faces (default 400, about two quads along a ripple) cannot hold, and that its normal map
should bring back.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    from dreampolish.backend import bake
    from dreampolish.backend.stages.export import polygon_payload
    from dreampolish.backend.stages.finish import FinishConfig, run_finish
    from dreampolish.backend.stages.texture import TextureConfig

    from tests.backend.stages.test_finish import Recorder, bumpy_torus

    faces = int(argv[2]) if len(argv) > 2 else 400
    high = bumpy_torus(ripples=20, sections=(320, 48))
    result = run_finish(FinishConfig(faces=faces), high, Recorder(), atlas_size=512, padding=4)
    low = result.low.mesh
    hv, hf = high.vertices.numpy(), high.faces.numpy()
    normal = bake.bake_normal_map(low.vertices.numpy(), low.faces.numpy(), low.uvs.numpy(), hv, hf, 512,
                                  ray_distance=TextureConfig().normal_ray_distance)
    payload = polygon_payload(low.to_payload(), result.low.sizes)
    np.savez(argv[1], high_vertices=hv, high_faces=hf, high_normals=bake.vertex_normals(hv, hf),
             low_vertices=payload.vertices, low_sizes=payload.face_sizes, low_corners=payload.face_corners,
             low_uvs=payload.corner_uvs(), low_normals=payload.normals, normal_map=normal.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
