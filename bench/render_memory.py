"""Training memory of a volume render: one NeRF training render and its backward pass, with and
without recomputing each ray chunk in the backward pass (VolumeRenderConfig.recompute_chunks).

    .venv/bin/python bench/render_memory.py [--preset standard] [--res 128] [--chunks 8] [--threads 2] [--normals]
        [--progress 1.0]

The NeRF stage's field and render settings come from the preset; every sample is evaluated (no
occupancy culling: the first steps of a stage, and an upper bound later). The image is split into
`--chunks` chunks of rays, so that the figures show how the peak grows with the chunk count: NeRF's
384-pixel phase is 147,456 rays, 9 chunks of the default 16,384. Peak = the most bytes live at once
(the dry run's counter, backend/commands/dryrun.py LiveBytes: every storage an op creates, until it
is freed), field weights and Adam state excluded. Ends with one JSON line.

`--normals` renders the normals as the NeRF stage's guidance steps do (the orientation penalty's weight is
above 0 throughout the stage; analytic normals: a gradient of the density taken inside each chunk), and
prints besides the bytes still live after the forward pass and after the backward pass with the render's
results still held (as the stage holds them until its next render). `--progress P` unlocks the hash grid's
levels due at P of the stage (schedules.stage_progress; the default 0 keeps the figures below the issue-16
table as they were measured; 1.0 is the stage's last steps, where the 384-pixel renders are, every level
active).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _one_step(preset: str, res: int, chunks: int, recompute: bool, normals: bool = False,
              progress: float = 0.0) -> dict[str, float]:
    from dreampolish.backend.commands.dryrun import LiveBytes
    from dreampolish.backend.geometry.fields import DensityField
    from dreampolish.backend.presets import get_preset
    from dreampolish.backend.render.cameras import orbit_cameras
    from dreampolish.backend.render.volume import NerfVolume, render_volume

    cfg = get_preset(preset).nerf
    torch.manual_seed(0)
    field = DensityField(cfg.density)
    field.update_progress(progress)
    render_cfg = cfg.render
    render_cfg.chunk_rays = -(-res * res // chunks)
    render_cfg.recompute_chunks = recompute
    one = torch.ones(1)
    camera = orbit_cameras(20 * one, 30 * one, 3.8 * one, 20 * one, res, res)
    counter = LiveBytes()
    started = time.perf_counter()
    with counter:
        out = render_volume(NerfVolume(field), camera, cfg.density.bound, render_cfg,
                            want_normals=normals or cfg.guidance_normals, generator=torch.Generator().manual_seed(1))
        after_forward = counter.live
        loss = out["rgb"].square().mean() + out["opacity"].mean()
        if normals:
            loss = loss + out["orientation"].mean()
        loss.backward()
        after_backward = counter.live - sum(p.grad.nbytes for p in field.parameters() if p.grad is not None)
        del out, loss
    return {"peak_gb": counter.peak / 1e9, "after_forward_gb": after_forward / 1e9,
            "after_backward_gb": after_backward / 1e9, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--normals", action="store_true", help="render normals, as the NeRF stage's guidance steps do")
    parser.add_argument("--progress", type=float, default=0.0, help="stage progress the hash grid's levels are at")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for chunks in sorted({1, args.chunks}):
        for recompute in (False, True):
            key = f"{chunks} chunk{'s' if chunks > 1 else ''}, {'recompute' if recompute else 'keep'}"
            rows[key] = row = _one_step(args.preset, args.res, chunks, recompute, args.normals, args.progress)
            print(f"{key:>26}: peak {row['peak_gb']:.3f} GB, live after forward {row['after_forward_gb']:.3f} GB, "
                  f"after backward {row['after_backward_gb']:.3f} GB, {row['seconds']:.1f} s", flush=True)
    print(json.dumps({"preset": args.preset, "res": args.res, "normals": args.normals, "progress": args.progress,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
