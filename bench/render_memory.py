"""Training memory of a volume render: one NeRF training render and its backward pass, with and
without recomputing each ray chunk in the backward pass (VolumeRenderConfig.recompute_chunks).

    .venv/bin/python bench/render_memory.py [--preset standard] [--res 128] [--chunks 8] [--threads 2]

The NeRF stage's field and render settings come from the preset; every sample is evaluated (no
occupancy culling: the first steps of a stage, and an upper bound later). The image is split into
`--chunks` chunks of rays, so that the figures show how the peak grows with the chunk count: NeRF's
384-pixel phase is 147,456 rays, 9 chunks of the default 16,384. Peak = the most bytes live at once
(the dry run's counter, backend/commands/dryrun.py LiveBytes: every storage an op creates, until it
is freed), field weights and Adam state excluded. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _one_step(preset: str, res: int, chunks: int, recompute: bool) -> dict[str, float]:
    from dreampolish.backend.commands.dryrun import LiveBytes
    from dreampolish.backend.geometry.fields import DensityField
    from dreampolish.backend.presets import get_preset
    from dreampolish.backend.render.cameras import orbit_cameras
    from dreampolish.backend.render.volume import NerfVolume, render_volume

    cfg = get_preset(preset).nerf
    torch.manual_seed(0)
    field = DensityField(cfg.density)
    render_cfg = cfg.render
    render_cfg.chunk_rays = -(-res * res // chunks)
    render_cfg.recompute_chunks = recompute
    one = torch.ones(1)
    camera = orbit_cameras(20 * one, 30 * one, 3.8 * one, 20 * one, res, res)
    counter = LiveBytes()
    started = time.perf_counter()
    with counter:
        out = render_volume(NerfVolume(field), camera, cfg.density.bound, render_cfg,
                            want_normals=cfg.guidance_normals, generator=torch.Generator().manual_seed(1))
        loss = out["rgb"].square().mean() + out["opacity"].mean()
        loss.backward()
        del out, loss
    return {"peak_gb": counter.peak / 1e9, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for chunks in sorted({1, args.chunks}):
        for recompute in (False, True):
            key = f"{chunks} chunk{'s' if chunks > 1 else ''}, {'recompute' if recompute else 'keep'}"
            rows[key] = _one_step(args.preset, args.res, chunks, recompute)
            print(f"{key:>26}: peak {rows[key]['peak_gb']:.3f} GB, {rows[key]['seconds']:.1f} s", flush=True)
    print(json.dumps({"preset": args.preset, "res": args.res, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
