"""The job store's fault table: each store file of a finished job (and a paused one's resume.msg)
deleted, truncated to half and bit-flipped at its middle, then a restart; one row per case.

    PYTHONPATH=. .venv/bin/python bench/store_faults.py [--out table.md]

It then times the store's costs: progress events per second (the seq mark's fsynced state writes),
one large stage result (its own file and its event, both fsynced), and loading the job back.

A row says whether the backend started and served the neighbouring job, the damaged job's state,
how many of its events and stage results a client attaching from 0 gets (and whether the seqs are
contiguous and end in the final event), and the job's one-line damage report. The kill -9 cases
are tests/backend/test_store_faults.py::test_kill_at_a_stage_boundary_sends_every_stage_once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from dreampolish.backend.executor import LocalExecutor  # noqa: E402
from dreampolish.backend.job_store import JobStore  # noqa: E402
from dreampolish.backend.jobs import JobManager, StoreJobContext  # noqa: E402
from dreampolish.protocol import codec  # noqa: E402
from dreampolish.protocol import messages as m  # noqa: E402
from dreampolish.protocol.client import BackendClient  # noqa: E402
from dreampolish.protocol.job import JobSpec  # noqa: E402

from tests.support.pipelines import ScriptedPipeline, octahedron, running_backend  # noqa: E402


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"delete": lambda p: p.unlink(), "truncate": truncate, "bit flip": flip}
FILES = ["events.log", "state.json", "spec.msg", "results/02-dmtet.msg", "resume.msg"]


def client_for(endpoint: str) -> BackendClient:
    c = BackendClient(endpoint, timeout_s=10, heartbeat_s=0.3, dead_after_s=5)
    c.connect()
    return c


def pristine(root: Path) -> tuple[str, str, str]:
    with running_backend(root) as server, client_for(server.endpoint) as client:
        done = client.submit(JobSpec("finished", options={"test.steps": 4}))
        client.wait(done, timeout_s=30)
        paused = client.submit(JobSpec("gated", pause_after=["neus"]))
        list(client.events(paused, timeout_s=30))
        neighbour = client.submit(JobSpec("neighbour"))
        client.wait(neighbour, timeout_s=30)
    store = JobStore(root)
    [job] = [j for j in store.load_all() if j.job_id == paused]
    store.save_resume(job, codec.encode(m.Resume(mesh=octahedron(2.0), job_id=paused)))
    job.state = "queued"
    store.save_state(job)
    return done, paused, neighbour


def one_case(root: Path, job: str, neighbour: str, name: str, damage: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(root, store)
        DAMAGE[damage](store / job / name)
        t0 = time.perf_counter()
        try:
            with running_backend(store) as server, client_for(server.endpoint) as client:
                start_ms = (time.perf_counter() - t0) * 1000
                jobs = {j.job_id: j for j in client.list_jobs()}
                served = len(client.fetch_result(neighbour).stage_results) == 5
                info = jobs[job]
                client.attach(job, 0)
                events = list(client.events(job, timeout_s=20))
        except Exception as exc:  # a row, not a crash: the table reports it
            return f"| {name} | {damage} | no: {type(exc).__name__} | | | | |"
        seqs_ok = [e.seq for e in events] == list(range(1, len(events) + 1))
        results = sum(isinstance(e, m.StageResult) for e in events)
        ending = events[-1].TYPE if events else "-"
        report = info.error.replace("|", "/") or "(nothing lost)"
        return (
            f"| {name} | {damage} | {'yes' if served else 'NO'} ({start_ms:.0f} ms) | {info.state} | "
            f"{len(events)}, {'contiguous' if seqs_ok else 'GAPS'}, ends `{ending}` | {results} | {report} |"
        )


def costs(root: Path, progress_events: int = 2000) -> dict[str, float]:
    manager = JobManager(JobStore(root), LocalExecutor(["cpu"]), {"cpu": ScriptedPipeline()}, lambda *e: None)
    spec = JobSpec("costs")
    job, _ = manager.submit(spec, codec.encode(m.Submit(spec=spec)))
    ctx = StoreJobContext(manager, job, "cpu")
    t0 = time.perf_counter()
    for i in range(progress_events):
        ctx.progress("nerf", i + 1, progress_events, {"loss": 1.0})
    per_s = progress_events / (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    mesh = octahedron()
    mesh.uvs = None
    mesh.vertices = rng.random((200_000, 3), dtype=np.float32)
    mesh.faces = rng.integers(0, 200_000, (400_000, 3)).astype(np.uint32)
    t0 = time.perf_counter()
    for index, stage in enumerate(["nerf", "neus", "dmtet", "polish", "texture"]):
        ctx.stage_result(stage, index, mesh)
    result_ms = (time.perf_counter() - t0) / 5 * 1000
    t0 = time.perf_counter()
    JobStore(root).load_all()
    load_ms = (time.perf_counter() - t0) * 1000
    mb = (mesh.vertices.nbytes + mesh.faces.nbytes) / 1e6
    print(
        f"progress events: {per_s:.0f}/s; a {mb:.1f} MB stage result: {result_ms:.0f} ms; "
        f"loading the job ({progress_events + 5} events): {load_ms:.0f} ms"
    )
    return {
        "progress_events_per_s": round(per_s),
        "stage_result_ms": round(result_ms),
        "stage_result_mb": round(mb, 1),
        "load_ms": round(load_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pristine"
        done, paused, neighbour = pristine(root)
        rows = [
            "| file | damage | backend up, neighbour served (start) | job state | events from attach 0 "
            "| stage results | the job's one line |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in FILES:
            job = paused if name == "resume.msg" else done
            for damage in DAMAGE:
                rows.append(one_case(root, job, neighbour, name, damage))
        table = "\n".join(rows)
        print(table)
        figures = costs(Path(tmp) / "costs")
    if args.out:
        args.out.write_text(table + "\n")
    cases = rows[2:]
    summary = {
        "benchmark": "store_faults",
        "cases": len(cases),
        "backend_up": sum("| yes (" in r for r in cases),
        "contiguous_to_the_end": sum("contiguous, ends" in r for r in cases),
        **figures,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
