"""The demo's Blender side: runs inside Blender's Python (the `bpy` module), as an artist would work.

It installs the built extension zip into a private extension repository, connects to a running
backend, generates from a prompt with the add-on's own operators (importing every stage as it
arrives), bakes the textures into the material, saves a self-contained .blend, renders a Cycles
turntable on the CPU and composes it into a contact sheet. A JSON summary of what happened is
written beside them (the end-to-end test reads it).

Headless Blender does not fire bpy.app.timers while this script runs, so it pumps the add-on's
queue-draining function itself — the very function the timer calls in a live Blender.

    python scripts/blender_demo.py --zip build/dreampolish-*.zip --backend tcp://127.0.0.1:5557 \
        --prompt "a teapot" --preset tiny --out out/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("dreampolish.demo")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", required=True, type=Path, help="the built extension zip (linux_x64)")
    p.add_argument("--backend", required=True, help="backend address, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--prompt", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--frames", type=int, default=8, help="turntable frames in the contact sheet")
    p.add_argument("--size", type=int, default=256, help="side of each turntable frame, pixels")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per frame")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the job")
    return p.parse_args(argv)


def install_extension(bpy, zip_path: Path, repo_dir: Path):
    """Install and enable the zip as Blender does (Preferences > Get Extensions > Install from Disk)."""
    import addon_utils  # noqa: F401  (importable once bpy is)

    repo = bpy.context.preferences.extensions.repos.new(
        name="dreampolish_demo", module="dreampolish_demo", custom_directory=str(repo_dir), source="USER")
    result = bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="dreampolish_demo", enable_on_install=True)
    if result != {"FINISHED"}:
        raise RuntimeError(f"installing {zip_path} failed: {result}")
    del repo
    return sys.modules["bl_ext.dreampolish_demo.dreampolish"]


def connect(bpy, addon, addon_module: str, address: str, timeout_s: float = 60.0) -> None:
    """Connect as the panel's button does: the operator returns at once and the handshake ends on the
    client thread, so pump the add-on's queue (what its timer does) until it is connected; while the
    backend is still starting the handshake fails, and the demo tries again."""
    prefs = bpy.context.preferences.addons[addon_module].preferences
    prefs.backend_address = address
    rt = bpy.context.window_manager.dreampolish
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            bpy.ops.dreampolish.connect()
        except RuntimeError as exc:  # the operator reports a refusal it can see at once
            log.info("connect: %s", exc)
        while rt.connection == "connecting" and time.monotonic() < deadline:
            if addon.bridge.drain() == 0:
                time.sleep(0.05)
        if rt.connection == "connected":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"backend at {address} did not answer within {timeout_s:.0f} s "
                               f"(the add-on says: {rt.connection})")
        time.sleep(0.5)


def run_job(bpy, addon, prompt: str, preset: str, seed: int, timeout_s: float) -> dict:
    """Generate with the add-on's operator and pump its queue until the job ends, one event at a time,
    noting every stage the job's object showed."""
    scene_settings = bpy.context.scene.dreampolish
    scene_settings.prompt = prompt
    scene_settings.seed = seed
    scene_settings.preset = preset
    rt = bpy.context.window_manager.dreampolish
    if bpy.ops.dreampolish.generate() != {"FINISHED"}:
        raise RuntimeError(f"generate was refused: {rt.message}")
    stages_seen: list[str] = []
    objects_seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    last_report = ""
    while rt.job_state not in ("done", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {rt.job_id} still {rt.job_state!r} after {timeout_s:.0f} s")
        if addon.bridge.drain(max_events=1) == 0:
            time.sleep(0.02)
            continue
        for obj in bpy.data.objects:
            if obj.get("dreampolish_job") == rt.job_id:
                objects_seen.add(obj.name)
                stage = obj.get("dreampolish_stage", "")
                if stage and (not stages_seen or stages_seen[-1] != stage):
                    stages_seen.append(stage)
        report = f"{rt.stage} {rt.step}/{rt.total}"
        if report != last_report and rt.total:
            log.info("job %s %s: %s", rt.job_id[:8], rt.job_state, report)
            last_report = report
    addon.bridge.drain()
    if rt.job_state != "done":
        raise RuntimeError(f"job {rt.job_id} ended {rt.job_state}: {rt.message}")
    return {"job_id": rt.job_id, "stages_seen": stages_seen, "objects": sorted(objects_seen)}


def turntable(bpy, obj, out_dir: Path, frames: int, size: int, samples: int) -> list[Path]:
    """Render `frames` views around the object with Cycles on the CPU (transparent film)."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.6, 0.6, 0.6)

    # Frame the object: radius from its world bounding box.
    from mathutils import Vector

    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8.0
    radius = max((c - centre).length for c in corners) or 1.0
    cam_data = bpy.data.cameras.new("Turntable")
    cam_data.lens = 50.0
    cam = bpy.data.objects.new("Turntable", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    fov = cam_data.angle
    distance = radius / math.sin(fov / 2) * 1.1
    sun_data = bpy.data.lights.new("Key", type="SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("Key", sun_data)
    sun.rotation_euler = (math.radians(50), 0.0, math.radians(30))
    scene.collection.objects.link(sun)
    # A weaker fill light from the other side, so the turntable's back views are not black.
    fill_data = bpy.data.lights.new("Fill", type="SUN")
    fill_data.energy = 1.2
    fill = bpy.data.objects.new("Fill", fill_data)
    fill.rotation_euler = (math.radians(50), 0.0, math.radians(210))
    scene.collection.objects.link(fill)

    paths = []
    for i in range(frames):
        az = 2 * math.pi * i / frames - math.pi / 2
        el = math.radians(15)
        cam.location = centre + Vector((math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))) * distance
        cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
        path = out_dir / f"turntable_{i:02d}.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        paths.append(path)
    bpy.data.objects.remove(cam)
    bpy.data.objects.remove(sun)
    bpy.data.objects.remove(fill)
    return paths


def contact_sheet(bpy, frames: list[Path], path: Path, columns: int = 4) -> Path:
    """Tile the turntable frames over a neutral background into one PNG."""
    import numpy as np

    tiles = []
    for f in frames:
        img = bpy.data.images.load(str(f))
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
        tiles.append(px.reshape(h, w, 4))
        bpy.data.images.remove(img)
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    sheet = np.zeros((rows * h, columns * w, 4), dtype=np.float32)
    sheet[..., :3] = 0.18
    sheet[..., 3] = 1.0
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        # Blender's pixel rows start at the bottom: row 0 of the sheet's first tile row is its top.
        y0 = (rows - 1 - r) * h
        a = t[..., 3:4]
        sheet[y0:y0 + h, c * w:(c + 1) * w, :3] = t[..., :3] * a + sheet[y0:y0 + h, c * w:(c + 1) * w, :3] * (1 - a)
    img = bpy.data.images.new("contact_sheet", width=columns * w, height=rows * h, alpha=False)
    img.pixels.foreach_set(sheet.ravel())
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)
    return path


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Blender's user folders go to a private place: the demo never touches the user's own Blender.
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dreampolish-demo-blender-"))
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    addon = install_extension(bpy, args.zip.resolve(), Path(tempfile.mkdtemp(prefix="dreampolish-demo-ext-")))
    module = addon.__name__
    log.info("installed and enabled the extension %s", module)
    try:
        connect(bpy, addon, module, args.backend)
        rt = bpy.context.window_manager.dreampolish
        log.info("connected to %s (device: %s)", args.backend, rt.device)
        job = run_job(bpy, addon, args.prompt, args.preset, args.seed, args.timeout)
        log.info("job %s done; stages shown in Blender: %s", job["job_id"], ", ".join(job["stages_seen"]))

        obj = next(o for o in bpy.data.objects if o.get("dreampolish_job") == job["job_id"])
        for o in bpy.context.view_layer.objects:
            o.select_set(o == obj)
        bpy.context.view_layer.objects.active = obj
        if bpy.ops.dreampolish.bake_to_material() != {"FINISHED"}:
            raise RuntimeError("bake to material failed")
        blend = out / "dreampolish_demo.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        log.info("saved %s", blend)

        frames = turntable(bpy, obj, out, args.frames, args.size, args.samples)
        sheet = contact_sheet(bpy, frames, out / "contact_sheet.png")
        log.info("contact sheet %s", sheet)
        summary = {
            **job,
            "object": obj.name,
            "vertices": len(obj.data.vertices),
            "faces": len(obj.data.polygons),
            "uv_layers": [uv.name for uv in obj.data.uv_layers],
            "images": sorted({img.name for img in bpy.data.images if img.packed_file is not None}),
            "blend": str(blend),
            "contact_sheet": str(sheet),
            "frames": [str(f) for f in frames],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        addon.bridge.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
