"""Stage speed with the `tiny` preset on this machine's CPU: runs one whole generate job through the
DreamPolish pipeline (exactly what the backend's worker runs) and reports, per stage, wall time, steps
and steps per second, from the pipeline's own progress reports. Prints a table and one JSON line.

    .venv/bin/python bench/cpu_stages.py [--preset tiny] [--prompt "..."] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload


class TimingContext:
    """A JobContext that records when each stage reports its steps and results."""

    def __init__(self, work_dir: Path, device: str):
        self.job_id = "bench"
        self.work_dir = work_dir
        self.device = device
        self.stages: dict[str, dict] = {}
        self._last = time.perf_counter()

    def _stage(self, name: str) -> dict:
        if name not in self.stages:
            self.stages[name] = {"start": time.perf_counter(), "steps": 0, "total": 0, "end": None}
        return self.stages[name]

    def progress(self, stage, step, total, losses=None, preview_png=None) -> None:
        s = self._stage(stage)
        s["steps"] = max(s["steps"], int(step))
        s["total"] = int(total)
        s["last"] = time.perf_counter()

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        s = self._stage(stage)
        s["end"] = time.perf_counter()
        s["faces"] = mesh.num_faces

    def check_cancel(self) -> None:
        """The benchmark never cancels."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt", default="a ceramic teapot with a blue glaze")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = DreamPolishPipeline()
    spec = JobSpec(prompt=args.prompt, preset=args.preset, seed=0)
    pipeline.check(spec)
    with tempfile.TemporaryDirectory(prefix="dreampolish-bench-") as tmp:
        ctx = TimingContext(Path(tmp), "cpu")
        t0 = time.perf_counter()
        pipeline.run(spec, ctx)
        total = time.perf_counter() - t0
    rows = []
    prev_end = t0
    for name, s in ctx.stages.items():
        # A stage ends with its mesh; the reference stage sends none, its image comes with its last progress.
        end = s["end"] or s.get("last") or s["start"]
        wall = end - prev_end
        prev_end = end
        rows.append({"stage": name, "wall_s": round(wall, 2), "steps": s["steps"],
                     "steps_per_s": round(s["steps"] / wall, 2) if s["steps"] and wall > 0 else None,
                     "faces": s.get("faces")})
    print(f"preset {args.preset} on the CPU ({torch.get_num_threads()} threads): {total:.1f} s in all")
    for r in rows:
        print(f"  {r['stage']:10s} {r['wall_s']:7.2f} s  {r['steps']:5d} steps  "
              f"{r['steps_per_s'] or 0:7.2f} steps/s  faces {r['faces']}")
    print(json.dumps({"benchmark": "cpu_stages", "preset": args.preset, "total_s": round(total, 2),
                      "threads": torch.get_num_threads(), "stages": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
