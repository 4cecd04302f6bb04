"""Host syncs per optimisation step of every stage (issue 28), counted on the CPU.

Runs one generate job of the `tiny` preset through the real pipeline (tiny models, PyTorch rasteriser)
under backend/host_syncs.HostSyncCounter and prints, per stage, the syncs of each reported step and where
the steady-state ones come from. Syncs inside the PyTorch rasteriser (nvdiffrast's stand-in on the CPU)
are counted apart. Ends with one JSON line.

With `--device cuda` (bench/gpu_run.sh) the job runs on the GPU and CUDA's own sync debug mode
(`torch.cuda.set_sync_debug_mode("warn")`) also counts every synchronising CUDA call per step, blocking
host-to-device copies included, which no CPU instrument can see.

    .venv/bin/python bench/host_syncs.py [--steps 8] [--report-every 4] [--stacks] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dreampolish.backend.host_syncs import CPU_ONLY_FILES, HostSyncCounter, StepSyncRecorder  # noqa: E402
from dreampolish.backend.models.specs import MODEL_DIR_ENV  # noqa: E402
from dreampolish.backend.models.tiny import build_tiny_models  # noqa: E402
from dreampolish.backend.pipeline import DreamPolishPipeline  # noqa: E402
from dreampolish.protocol.job import JobSpec  # noqa: E402

STAGES = ("nerf", "neus", "dmtet", "polish", "texture")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--report-every", type=int, default=4)
    ap.add_argument("--stacks", action="store_true", help="list where each steady-state sync comes from")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="host-syncs-"))
    build_tiny_models(tmp / "tiny")
    os.environ[MODEL_DIR_ENV] = str(tmp)
    options: dict = {f"{s}.steps": args.steps for s in STAGES}
    options.update({"preview_every": 0, "report_every": args.report_every})
    counter = HostSyncCounter(keep_stacks=args.stacks, excuse=CPU_ONLY_FILES)
    rec = StepSyncRecorder(counter, tmp / "job", device=args.device)
    cuda_syncs: dict[str, list[int]] = {}
    with warnings.catch_warnings(record=True) as caught, counter:
        warnings.simplefilter("always")
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.set_sync_debug_mode("warn")

            def cuda_step(stage: str, _step) -> None:
                cuda_syncs.setdefault(stage, []).append(sum("synchroniz" in str(w.message) for w in caught))
                caught.clear()

            rec.on_step = cuda_step
        DreamPolishPipeline().run(JobSpec(prompt="a red cone", preset="tiny", options=options), rec)
    report = {}
    print(f"{'stage':8} {'syncs per step (* = reporting step)':50} steady-state median")
    for stage in STAGES:
        per_step = [(s.step, s.count, s.reported) for s in rec.steps[stage]]
        steady = [s.count for s in rec.steady_state(stage)]
        median = statistics.median(steady) if steady else None
        report[stage] = {"per_step": per_step, "steady_median": median}
        if stage in cuda_syncs:
            report[stage]["cuda_sync_warnings_per_step"] = cuda_syncs[stage]
            print(f"{'':8} CUDA sync debug mode, per step: {cuda_syncs[stage]}")
        shown = " ".join(f"{n}{'*' if r else ''}" for _, n, r in per_step)
        print(f"{stage:8} {shown:50} {median}")
        if args.stacks:
            for where, n in rec.stacks[stage].most_common(30):
                print(f"    {n:4d} {where}")
    print(json.dumps({"bench": "host_syncs", "device": args.device, "steps": args.steps,
                      "report_every": args.report_every, "stages": report}))


if __name__ == "__main__":
    main()
