"""`dreampolish-backend render`: render a mesh file from a protocol (Blender) camera.

    dreampolish-backend render --mesh FILE --camera FILE.json --out DIR [--backend torch]

Writes into DIR:
  rgba.png           shaded colour (vertex colours, or grey with a head light), sRGB, alpha = coverage
  mask.png           antialiased coverage, 8-bit grey
  depth.npy          float32 (H,W) camera depth in metres along the view axis, 0 = background
  depth.png          16-bit grey: depth in millimetres (0 = background)
  depth_preview.png  8-bit grey: near = white, far = dark, background black
  normals.png        world-space normals as RGB = (n + 1) / 2, alpha = coverage

The camera JSON holds exactly the CameraSpec fields: matrix_world (4 rows of 4), lens_mm,
sensor_width_mm, sensor_height_mm, sensor_fit, resolution [w, h], shift [x, y], name.
It exists to check our camera conventions against Blender's own renders.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from dreampolish.protocol.camera_json import load_camera_json, save_camera_json  # noqa: F401 (this command's format)
from dreampolish.protocol.errors import ValidationError

log = logging.getLogger(__name__)

AMBIENT = 0.25
"""Share of the grey shading that does not depend on the light direction."""
GREY_ALBEDO = 0.8
"""Linear albedo of meshes without vertex colours."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("render", help="render a mesh file from a Blender camera (JSON) to image files")
    p.add_argument("--mesh", type=Path, required=True, help="mesh file (.obj .ply .glb .gltf .stl), Z-up world")
    p.add_argument("--camera", type=Path, required=True, help="camera JSON with the CameraSpec fields")
    p.add_argument("--out", type=Path, required=True, help="folder for the image files")
    p.add_argument("--backend", choices=("auto", "torch", "nvdiffrast"), default="auto",
                   help="rasteriser back end (default: nvdiffrast on CUDA when installed, else torch)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--face-normals", action="store_true", help="flat shading with face normals")
    p.set_defaults(run=run)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_to_folder(mesh_path: Path, camera_path: Path, out_dir: Path, backend: str = "auto",
                     device: str | None = None, smooth_normals: bool = True) -> dict[str, Path]:
    """Render `mesh_path` from the camera in `camera_path`; returns the written files by name."""
    import torch
    from dreampolish.backend.geometry.mesh import load_mesh
    from dreampolish.backend.render.cameras import camera_from_blender
    from dreampolish.backend.render.colour import linear_to_srgb, srgb_to_linear
    from dreampolish.backend.render.rasterize import MeshRasterizer
    from PIL import Image

    mesh_path, camera_path, out_dir = Path(mesh_path), Path(camera_path), Path(out_dir)
    spec = load_camera_json(camera_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mesh = load_mesh(mesh_path, device=device)
    cameras = camera_from_blender(spec, device=device)
    rasterizer = MeshRasterizer(backend)  # type: ignore[arg-type]
    with torch.no_grad():
        out = rasterizer.rasterize(mesh, cameras, smooth_normals=smooth_normals)
        if mesh.vertex_colors is not None:
            # The mesh's colours are display values (load_mesh decodes the file's); light adds in linear.
            albedo = rasterizer.interpolate(srgb_to_linear(mesh.vertex_colors), out, mesh.faces)
        else:
            albedo = torch.full_like(out.normal, GREY_ALBEDO)
        # Head light: Lambert term with the light at the camera, two-sided.
        to_camera = torch.nn.functional.normalize(cameras.c2w[:, None, None, :3, 3] - out.world_pos, dim=-1)
        lambert = (out.normal * to_camera).sum(-1, keepdim=True).abs()
        colour = albedo * (AMBIENT + (1.0 - AMBIENT) * lambert) * out.foreground
        colour = rasterizer.antialias(colour, out, mesh, cameras)
        normals = rasterizer.antialias((out.normal + 1.0) * 0.5 * out.foreground, out, mesh, cameras)

    mask = out.mask[0, ..., 0].cpu().numpy()
    # The antialiased colour is premultiplied by coverage; PNG alpha is straight.
    rgb = colour[0].cpu().numpy() / np.maximum(mask, 1e-6)[..., None]
    depth = out.depth[0, ..., 0].cpu().numpy().astype(np.float32)
    fg = depth > 0

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "rgba": out_dir / "rgba.png", "mask": out_dir / "mask.png", "depth_npy": out_dir / "depth.npy",
        "depth_png": out_dir / "depth.png", "depth_preview": out_dir / "depth_preview.png",
        "normals": out_dir / "normals.png",
    }
    Image.fromarray(np.dstack([_to_u8(linear_to_srgb(rgb)), _to_u8(mask)]), "RGBA").save(files["rgba"])
    Image.fromarray(_to_u8(mask), "L").save(files["mask"])
    np.save(files["depth_npy"], depth)
    depth_mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(depth_mm).save(files["depth_png"])
    preview = np.zeros_like(depth)
    if fg.any():
        near, far = float(depth[fg].min()), float(depth[fg].max())
        preview[fg] = 1.0 - 0.8 * (depth[fg] - near) / max(far - near, 1e-9)
    Image.fromarray(_to_u8(preview), "L").save(files["depth_preview"])
    normal_rgb = normals[0].cpu().numpy() / np.maximum(mask, 1e-6)[..., None]
    Image.fromarray(np.dstack([_to_u8(normal_rgb), _to_u8(mask)]), "RGBA").save(files["normals"])
    log.info("rendered %s (%d faces) at %dx%d: %d covered pixels -> %s",
             mesh_path, mesh.num_faces, cameras.width, cameras.height, int(fg.sum()), out_dir)
    return files


def run(args: argparse.Namespace) -> int:
    try:
        files = render_to_folder(args.mesh, args.camera, args.out, backend=args.backend, device=args.device,
                                 smooth_normals=not args.face_normals)
    except (ValidationError, ValueError, OSError) as exc:
        log.error("render failed: %s", exc)
        return 2
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
