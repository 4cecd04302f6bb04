"""Rasterisation benchmark: time per forward (+ backward) of the mesh rasteriser for 100k and 1M triangles
at 512² and 1024², nvdiffrast next to the pure-PyTorch back end. On a machine without CUDA it runs the
PyTorch back end only, at a reduced size, and says so. Prints a table and one JSON line.

    python bench/gpu_raster.py [--sizes 512 1024] [--faces 100000 1000000] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer


def sphere(faces_target: int, device: torch.device) -> TriMesh:
    """A UV sphere of radius 0.5 with about faces_target triangles."""
    n = max(4, int((faces_target / 2) ** 0.5))
    theta = torch.linspace(0, torch.pi, n + 1, device=device)[1:-1]
    phi = torch.linspace(0, 2 * torch.pi, n + 1, device=device)[:-1]
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3) * 0.5
    poles = torch.tensor([[0, 0, 0.5], [0, 0, -0.5]], device=device)
    verts = torch.cat([ring, poles]).float()
    rows, cols = n - 1, n
    idx = torch.arange(rows * cols, device=device).reshape(rows, cols)
    a, b = idx[:-1], idx[1:]
    a2, b2 = a.roll(-1, 1), b.roll(-1, 1)
    quads = torch.cat([torch.stack([a, b, b2], -1).reshape(-1, 3), torch.stack([a, b2, a2], -1).reshape(-1, 3)])
    top = torch.stack([torch.full((cols,), rows * cols, device=device), idx[0], idx[0].roll(-1)], -1)
    bot = torch.stack([torch.full((cols,), rows * cols + 1, device=device), idx[-1].roll(-1), idx[-1]], -1)
    return TriMesh(verts, torch.cat([quads, top, bot]).long())


def timed(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (and nvdiffrast's first-use compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--faces", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes = args.sizes or ([512, 1024] if cuda else [256])
    faces = args.faces or ([100_000, 1_000_000] if cuda else [20_000])
    backends = ["nvdiffrast", "torch"] if cuda else ["torch"]
    if not cuda:
        print("no CUDA device: PyTorch back end on the CPU only, at a reduced size")
    card = torch.cuda.get_device_name(0) if cuda else "CPU"
    rows = []
    for nf in faces:
        mesh = sphere(nf, device)
        mesh.vertices.requires_grad_(True)
        for size in sizes:
            cams = orbit_cameras(torch.zeros(args.batch, device=device),
                                 torch.linspace(0, 270, args.batch, device=device),
                                 torch.full((args.batch,), 2.0, device=device),
                                 torch.full((args.batch,), 40.0, device=device), size, size)
            for backend in backends:
                try:
                    rast = MeshRasterizer(backend)

                    def fwd(rast=rast, cams=cams, mesh=mesh):
                        with torch.no_grad():
                            rast.rasterize(mesh, cams)

                    def fwd_bwd(rast=rast, cams=cams, mesh=mesh):
                        out = rast.rasterize(mesh, cams)
                        (out.mask.sum() + out.normal.sum()).backward()

                    repeat = args.repeat if cuda else 2
                    row = {"backend": backend, "faces": int(mesh.faces.shape[0]), "size": size, "batch": args.batch,
                           "forward_ms": round(1000 * timed(fwd, device, repeat), 2),
                           "forward_backward_ms": round(1000 * timed(fwd_bwd, device, repeat), 2)}
                except Exception as exc:  # noqa: BLE001 - report and go on with the other back end
                    row = {"backend": backend, "faces": nf, "size": size, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(row)
    print(json.dumps({"benchmark": "raster", "device": card, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
