"""The Ray executor on this machine (issue 17): throughput of `tiny` jobs with 1, 2 and 4 workers, and
the latency Ray adds over the local executor for one job.

    PYTHONPATH=. .venv/bin/python bench/ray_executor.py [--jobs 4] [--workers 1,2,4] [--skip-throughput]

Throughput: the real DreamPolish pipeline, `tiny` preset (tiny models built into a temporary model
cache), `--jobs` jobs submitted at once to a backend whose Ray executor has W actors on a local Ray
cluster (a custom resource stands in for W GPUs); jobs per minute from the first submit to the last
`done`. The workers share this machine's cores, so W above the core count cannot add throughput.

Latency: ScriptedPipeline (no compute: what is timed is the job system), one job of `--events`
progress steps over one stage, once through the LocalExecutor and once through the Ray executor with
one actor, each run `--repeats` times; the median time from submit to the job's first event and to
its `done`, and the per-event overhead ((ray total - local total) / events).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from dreampolish.backend.executor_ray import RayExecutor  # noqa: E402
from dreampolish.backend.models.specs import MODEL_DIR_ENV  # noqa: E402
from dreampolish.backend.models.tiny import build_tiny_models  # noqa: E402
from dreampolish.backend.server import BackendServer, ServerConfig  # noqa: E402
from dreampolish.protocol import messages as m  # noqa: E402
from dreampolish.protocol.job import JobSpec  # noqa: E402

from tests.support.pipelines import connected_client  # noqa: E402

RESOURCE = "bench_gpu"


def backend(executor, pipeline, store: Path) -> BackendServer:
    factory = executor.pipeline_factory if executor is not None else pipeline
    server = BackendServer(ServerConfig(bind="tcp://127.0.0.1:*", store_dir=store), factory, executor=executor)
    server.start()
    return server


def run_jobs(server: BackendServer, specs: list[JobSpec], timeout_s: float) -> tuple[float, list[float], float]:
    """Submit every spec at once; (seconds to the last done, each job's seconds to its first event,
    seconds to the first event of the first job)."""
    client = connected_client(server.endpoint)
    try:
        start = time.perf_counter()
        jobs = {client.submit(s): start for s in specs}
        first: dict[str, float] = {}
        open_jobs = set(jobs)
        while open_jobs:
            msg = client.poll(timeout_s)
            if msg is None:
                raise TimeoutError(f"no event for {timeout_s} s")
            first.setdefault(msg.job_id, time.perf_counter() - start)
            if msg.TYPE in m.FINAL_EVENTS:
                if not isinstance(msg, m.Done):
                    raise RuntimeError(f"job {msg.job_id} ended with {msg}")
                open_jobs.discard(msg.job_id)
        return time.perf_counter() - start, [first[j] for j in jobs], min(first.values())
    finally:
        client.close()


def throughput(workers: list[int], jobs: int, store: Path) -> list[dict]:
    from dreampolish.backend.pipeline import DreamPolishPipeline

    rows = []
    for w in workers:
        executor = RayExecutor("dreampolish.backend.pipeline:DreamPolishPipeline", resource=RESOURCE, workers=w)
        server = backend(executor, DreamPolishPipeline, store / f"w{w}")
        try:
            specs = [JobSpec(f"a ceramic teapot {i}", preset="tiny", seed=i) for i in range(jobs)]
            total, _, _ = run_jobs(server, specs, timeout_s=900)
        finally:
            server.stop()
        rows.append({"workers": w, "jobs": jobs, "seconds": round(total, 1),
                     "jobs_per_minute": round(jobs * 60 / total, 2)})
        print(f"| {w} | {jobs} | {total:.1f} | {jobs * 60 / total:.2f} |", flush=True)
    return rows


def latency(events: int, repeats: int, store: Path) -> dict:
    from tests.support.pipelines import ScriptedPipeline

    spec = JobSpec("a cup", preset="tiny", stages=["nerf"], options={"test.steps": events})
    out = {}
    for name in ("local", "ray"):
        executor = RayExecutor("tests.support.pipelines:ScriptedPipeline", resource=RESOURCE, workers=1) \
            if name == "ray" else None
        server = backend(executor, ScriptedPipeline, store / name)
        try:
            runs = [run_jobs(server, [spec], timeout_s=120) for _ in range(repeats)]
        finally:
            server.stop()
        out[name] = {"first_event_s": statistics.median(r[2] for r in runs),
                     "total_s": statistics.median(r[0] for r in runs)}
    # The job's events: `events` progress reports, one stage result and done.
    out["per_event_overhead_ms"] = (out["ray"]["total_s"] - out["local"]["total_s"]) / (events + 2) * 1e3
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        build_tiny_models(root / "models" / "tiny")
        os.environ[MODEL_DIR_ENV] = str(root / "models")
        ray.init(num_cpus=os.cpu_count(), resources={RESOURCE: max(workers)}, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO),
                                                                MODEL_DIR_ENV: str(root / "models")}})
        try:
            lat = latency(args.events, args.repeats, root / "latency")
            print(f"one job, {args.events} progress events (ScriptedPipeline), median of {args.repeats}:")
            print("| executor | submit -> first event | submit -> done |\n|---|---|---|")
            for name in ("local", "ray"):
                print(f"| {name} | {lat[name]['first_event_s'] * 1e3:.1f} ms | {lat[name]['total_s'] * 1e3:.1f} ms |")
            print(f"per-event overhead of ray: {lat['per_event_overhead_ms']:.3f} ms")
            rows = []
            if not args.skip_throughput:
                print(f"\n`tiny` jobs (DreamPolishPipeline), {os.cpu_count()} cores:")
                print("| workers | jobs | seconds | jobs/min |\n|---|---|---|---|")
                rows = throughput(workers, args.jobs, root / "throughput")
        finally:
            ray.shutdown()
    print(json.dumps({"benchmark": "ray_executor", "latency": lat, "throughput": rows,
                      "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
