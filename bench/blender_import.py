"""Blender import benchmark: the transport benchmark's payload (~1M triangles, per-corner UVs, a 2048²
base-colour PNG) from the wire to a visible, textured Blender object, inside Blender's Python (the bpy
module) with the installed extension's own code: receive over loopback ZeroMQ, decode, build the mesh
with foreach_set, write the texture to the add-on's cache, load it and build the Principled material.
Prints a table and one JSON line. Target on the 2-core CPU: <= 2 s for the whole path.

    .venv-blender/bin/python bench/blender_import.py [--faces 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dreampolish-bench-blender-"))

import bpy  # noqa: E402
import zmq  # noqa: E402
from blender_demo import install_extension  # noqa: E402  (the demo installs the extension the same way)
from payloads import grid_mesh, png_bytes, texture_image  # noqa: E402


def install_addon():
    zips = sorted((REPO / "build").glob("dreampolish-*-linux_x64.zip"))
    if not zips:
        sys.exit("no built extension in build/: run `make addon`")
    return install_extension(bpy, zips[-1], Path(tempfile.mkdtemp(prefix="dreampolish-bench-ext-")))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1_000_000)
    p.add_argument("--texture", type=int, default=2048)
    args = p.parse_args()

    addon = install_addon()
    import importlib

    codec = importlib.import_module(addon.__name__ + ".protocol.codec")
    messages = importlib.import_module(addon.__name__ + ".protocol.messages")
    scene_mod = importlib.import_module(addon.__name__ + ".protocol.scene")
    mesh_io, materials = addon.mesh_io, addon.materials

    verts, faces, uvs = grid_mesh(args.faces)
    png = png_bytes(texture_image(args.texture))
    msg = messages.StageResult(
        stage="texture", index=5, job_id="bench", seq=1,
        mesh=scene_mod.MeshPayload(verts, faces, uvs=uvs,
                                   textures=[scene_mod.TexturePayload("base_color", png=png)]))
    frames = codec.encode(msg)

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    cache_dir = Path(tempfile.mkdtemp(prefix="dreampolish-bench-cache-"))

    t = {}
    t0 = time.perf_counter()
    push.send_multipart(frames, copy=False)
    got = pull.recv_multipart(copy=False)
    t["receive_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = codec.decode(got)
    t["decode_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    mesh = mesh_io.new_mesh("bench", out.mesh)
    obj = bpy.data.objects.new("bench", mesh)
    bpy.context.scene.collection.objects.link(obj)
    t["mesh_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    tex_path = cache_dir / "base_color.png"
    tex_path.write_bytes(out.mesh.texture("base_color").png)
    img = materials.load_image("base_color", tex_path, "bench base_color")
    mat = materials.textured_material("bench material", {"base_color": img})
    materials.assign_material(obj, mat)
    img.pixels[0]  # force the image to load, as the viewport will
    t["material_s"] = time.perf_counter() - t3
    bpy.context.view_layer.update()
    t["total_s"] = time.perf_counter() - t0
    ctx.destroy(linger=0)

    assert len(obj.data.polygons) == faces.shape[0] and len(obj.data.uv_layers) == 1
    figures = {"benchmark": "blender_import", "blender": bpy.app.version_string, "faces": int(faces.shape[0]),
               "texture_side": args.texture, **{k: round(v, 3) for k, v in t.items()}}
    print(f"Blender {bpy.app.version_string}: {figures['faces']} triangles + {args.texture}² texture")
    for k, v in t.items():
        print(f"  {k:12s} {v:.3f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
