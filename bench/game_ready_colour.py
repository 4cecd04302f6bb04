"""The micro game-ready job ("a red cone", Game-ready at 3000 faces in quads, as
tests/backend/micro/test_micro_game_ready.py runs it) at several seeds: the textured low mesh's colour against
the prompt's (ΔE*ab of the seen base colour, backend/micro/quality.py), its shape against the world's cone
(Chamfer in % of the diagonal, silhouette IoU over held-out views), the low mesh's Chamfer to the polished
surface (fraction of its bounding-box diagonal), its faces and share of quads, the normal map's median tilt, and
the job's wall time. Prints one line per seed, the mean, then one JSON line.

    .venv/bin/python bench/game_ready_colour.py --seeds 0 1 2 [--keep DIR] [--from DIR] [--label NAME] \
        [--option texture.lit_share=0.5 ...]

--keep DIR keeps each seed's job folder (its checkpoints) as DIR/seed<N>. --from DIR starts each seed from a
copy of DIR/seed<N>'s checkpoints up to the finish stage: texture and export run again on the same low mesh
(every stage draws from its own seed, backend/rng.py), which compares a change of the texture stage without
the geometry's run-to-run differences.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.metrics import chamfer_fraction
from dreampolish.backend.micro import quality
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.pipeline.frame import job_frame
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.job import JobSpec

COLOUR, SHAPE = "red", "cone"
OPTIONS = {"finish.faces": 3000, "finish.quads": True}
UP_TO_FINISH = ["reference", "nerf", "neus", "dmtet", "polish", "finish"]


def _tri(payload) -> TriMesh:
    return TriMesh(torch.as_tensor(payload.vertices), torch.as_tensor(payload.faces.astype(np.int64)))


def _from_checkpoints(source: Path, work: Path) -> None:
    """`work` as a copy of `source`'s checkpoints of the stages up to finish (the later ones dropped)."""
    shutil.copytree(source / "checkpoints", work / "checkpoints")
    manifest_path = work / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = [s for s in manifest["finished"] if s in UP_TO_FINISH]
    manifest["sha256"] = {k: v for k, v in manifest.get("sha256", {}).items() if k in UP_TO_FINISH}
    manifest["paused_after"] = None
    manifest_path.write_text(json.dumps(manifest))


def run_seed(seed: int, work: Path, start_from: Path | None, options: dict) -> dict:
    spec = JobSpec(quality.world.object_prompt(COLOUR, SHAPE), preset="micro", seed=seed, options={**OPTIONS, **options})
    if start_from is not None:
        _from_checkpoints(start_from, work)
    ctx = quality._Recorder(work)
    t = time.monotonic()
    DreamPolishPipeline().run(spec, ctx, ResumePoint() if start_from is not None else None)
    seconds = time.monotonic() - t
    front = float(job_frame(spec, get_preset("micro", spec.options)).reference_camera.azimuth_deg[0])
    finished, polished, textured = ctx.results["finish"], ctx.results["polish"], ctx.results["texture"]
    q = quality.score(textured, COLOUR, SHAPE, front)
    normal = textured.texture("normal")
    tilt = float("nan")
    if normal is not None:
        tilt = float(np.median(np.degrees(np.arccos(np.clip(normal.array[..., 2].astype(np.float32), -1, 1)))))
    return {"seed": seed, "colour_delta_e": round(q.colour_delta_e, 2), "chamfer_pct": round(q.chamfer_pct, 3),
            "iou": round(q.iou, 3), "low_chamfer": round(chamfer_fraction(_tri(finished), _tri(polished)), 5),
            "faces": int(finished.num_polygons), "quads_pct": round(100 * float(np.mean(finished.face_sizes == 4)), 1),
            "normal_tilt_deg": round(tilt, 2), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--keep", type=Path, default=None, help="keep each seed's job folder as DIR/seed<N>")
    p.add_argument("--from", dest="start_from", type=Path, default=None,
                   help="start each seed from DIR/seed<N>'s checkpoints up to finish")
    p.add_argument("--label", default="")
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE, a preset option (JSON value)")
    args = p.parse_args(argv)
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep / f"seed{seed}" if args.keep is not None else Path(tmp) / "job"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            source = None if args.start_from is None else args.start_from / f"seed{seed}"
            row = run_seed(seed, work, source, options)
        rows.append(row)
        print(f"{args.label} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    keys = [k for k in rows[0] if k != "seed"]
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    print(f"{args.label} mean " + " ".join(f"{k}={v}" for k, v in mean.items()))
    print(json.dumps({"benchmark": "game_ready_colour", "label": args.label, "options": {**OPTIONS, **options}, "rows": rows,
                      "mean": mean}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
