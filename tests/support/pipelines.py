"""Small deterministic pipelines for tests of the server, the client, the add-on and end to end.

Start a backend with one of them from the repository root:

    PYTHONPATH=. .venv/bin/dreampolish-backend serve --store /tmp/jobs --pipeline tests.support.pipelines:ScriptedPipeline

ScriptedPipeline is steered by JobSpec.options, so one backend serves every scenario:

    test.steps        optimisation steps per stage (default 3)
    test.step_s       seconds each step sleeps (default 0.0)
    test.fail_stage   stage in which to raise, at its first step
    test.fail_kind    "error" (RuntimeError), "oom" (an OutOfMemoryError like torch's), "cpu_oom" (torch's
                      CPU allocator's RuntimeError), "job_failed",
                      "disk_full" (OSError ENOSPC, as a checkpoint written to a full disk)
    test.preview      true: send a preview PNG with every progress report
    test.hold_while   a file path: before reporting step test.hold_at_step (default 1) of its first
                      stage, the job waits while that file exists (checking cancel), so a test decides
                      when it goes on instead of guessing how long it takes
    test.hold_at_step see test.hold_while

It emits, after each stage, an octahedron (or the spec's input_mesh) scaled by
1 + 0.25 * stage index (so results are known exactly; texture mode keeps the
input unscaled, with its UVs), and, for "texture", a base-colour PNG. It honours pause_after; a resume with an edited mesh makes every later
stage emit that mesh (scaled). It checkpoints the stages it finished under
ctx.work_dir and skips them when run again with a ResumePoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from dreampolish.backend.pipeline_api import JobContext, JobFailed, ResumePoint, RunOutcome
from dreampolish.backend.server import BackendServer, ServerConfig
from dreampolish.protocol.client import BackendClient
from dreampolish.protocol.errors import MODEL_MISSING, ValidationError
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.scene import MeshPayload, TexturePayload

from tests.support.png import png_rgb

STAGE_CHAINS: dict[str, tuple[str, ...]] = {
    "generate": ("reference", "nerf", "neus", "dmtet", "polish", "finish", "texture"),
    "geometry": ("dmtet", "polish", "finish", "texture"),
    "texture": ("texture",),
}
"""The chains this pipeline announces in welcome.stage_chains: the DreamPolish pipeline's own, which its
runners define (backend/pipeline/runners.py). Importing those (torch, diffusers) would take seconds at
every test backend's start, so they are written out here and tests/backend/pipeline/test_pipeline_stages.py
keeps them equal to DreamPolishPipeline.stage_chains()."""
MODE_STAGES: dict[str, tuple[str, ...]] = {
    mode: tuple(s for s in chain if s not in ("reference", "finish")) for mode, chain in STAGE_CHAINS.items()
}
"""The stages whose results this pipeline sends (the reference stage's is an image, sent as a preview; finish
is off, as in every preset while its option finish.faces is 0)."""
OPTION_KEYS = ("test.steps", "test.step_s", "test.fail_stage", "test.fail_kind", "test.preview", "test.hold_while",
               "test.hold_at_step", "reference.object_size")
"""The options this pipeline knows; reference.object_size (the add-on sends it with every generate job) is
accepted and ignored."""


class OutOfMemoryError(RuntimeError):
    """A RuntimeError with CUDA's out-of-memory message, as kernels outside torch's allocator raise
    it (torch's own allocator raises torch.OutOfMemoryError, which the job system knows by type)."""


def octahedron(scale: float = 1.0) -> MeshPayload:
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32) * scale
    f = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.uint32
    )
    uvs = np.tile(np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]], np.float32), (len(f), 1, 1))
    return MeshPayload(vertices=v, faces=f, uvs=uvs)


class ScriptedPipeline:
    """A pipeline whose behaviour is chosen per job through spec.options (see the module docstring)."""

    def presets(self) -> list[str]:
        return ["tiny", "fast"]

    def models(self) -> list[str]:
        """Announced in welcome; this pipeline needs none."""
        return []

    def check(self, spec: JobSpec) -> None:
        # What every pipeline refuses, by the protocol's own validation (as DreamPolishPipeline.check does);
        # then what depends on this pipeline: its presets and its options.
        validate_spec(spec)
        if spec.preset not in self.presets():
            raise ValidationError(f"preset {spec.preset!r} is not one of {self.presets()}")
        for key in spec.options:
            if key not in OPTION_KEYS:
                raise ValidationError(f"unknown option {key!r}; known: {OPTION_KEYS}")
        chain = (*STAGE_CHAINS[spec.mode], "export")
        for stage in [*(spec.stages or []), *spec.pause_after]:
            if stage not in chain:
                raise ValidationError(f"stage {stage!r} is not part of a {spec.mode!r} job ({', '.join(chain)})")

    def stage_chains(self) -> dict[str, list[str]]:
        return {mode: list(chain) for mode, chain in STAGE_CHAINS.items()}

    def stages(self, spec: JobSpec) -> list[str]:
        return [s for s in MODE_STAGES[spec.mode] if spec.stages is None or s in spec.stages]

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        steps = int(spec.options.get("test.steps", 3))
        step_s = float(spec.options.get("test.step_s", 0.0))
        preview = bool(spec.options.get("test.preview", False))
        hold = Path(spec.options["test.hold_while"]) if "test.hold_while" in spec.options else None
        hold_at = int(spec.options.get("test.hold_at_step", 1))
        first = 0
        checkpoint = ctx.work_dir / "checkpoint.json"
        state = json.loads(checkpoint.read_text()) if resume is not None and checkpoint.exists() else {}
        done: list[str] = state.get("done", [])
        edited_faces: int | None = state.get("edited_faces")
        edited = resume.edited_mesh if resume is not None else None
        if edited is not None:  # into this pipeline's job frame, which is the world (its results' transform)
            edited = edited.in_world()
            np.save(ctx.work_dir / "edited_vertices.npy", edited.vertices)
            np.save(ctx.work_dir / "edited_faces.npy", edited.faces)
            edited_faces = int(edited.faces.shape[0])
        for index, stage in enumerate(self.stages(spec)):
            if stage in done:
                continue
            for step in range(steps):
                ctx.check_cancel()
                if stage == spec.options.get("test.fail_stage"):
                    kind = spec.options.get("test.fail_kind", "error")
                    if kind == "oom":
                        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                    if kind == "cpu_oom":  # torch's CPU allocator, word for word
                        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not "
                                           "enough memory: you tried to allocate 18446744073 bytes.")
                    if kind == "job_failed":
                        raise JobFailed(MODEL_MISSING, f"the {stage} model is not installed")
                    if kind == "disk_full":  # the pipeline's own write (a checkpoint) finds the disk full
                        raise OSError(errno.ENOSPC, "No space left on device", str(checkpoint))
                    raise RuntimeError(f"scripted failure in {stage}")
                if step_s:
                    time.sleep(step_s)
                if hold is not None and index == first and step + 1 == hold_at:
                    while hold.exists():
                        ctx.check_cancel()
                        time.sleep(0.02)
                png = png_rgb(4, 4, (index * 40 % 256, 128, 200)) if preview else None
                ctx.progress(stage, step + 1, steps, {"loss": 1.0 / (step + 1)}, png)
            mesh = self._stage_mesh(ctx, spec, index, stage, edited_faces)
            ctx.stage_result(stage, index, mesh)
            done.append(stage)
            checkpoint.write_text(json.dumps({"done": done, "edited_faces": edited_faces}))
            if stage in spec.pause_after:
                return RunOutcome(paused_after=stage)
        return RunOutcome()

    def _stage_mesh(
        self, ctx: JobContext, spec: JobSpec, index: int, stage: str, edited_faces: int | None
    ) -> MeshPayload:
        # Texture-only jobs keep the input's vertices, faces and UVs exactly; other stages scale.
        scale = 1.0 if spec.mode == "texture" else 1.0 + 0.25 * index
        if edited_faces is not None:
            v = np.load(ctx.work_dir / "edited_vertices.npy")
            f = np.load(ctx.work_dir / "edited_faces.npy")
            mesh = MeshPayload(vertices=(v * scale).astype(np.float32), faces=f)
        elif spec.input_mesh is not None:
            given = spec.input_mesh
            mesh = MeshPayload(
                vertices=(given.vertices * scale).astype(np.float32),
                faces=np.array(given.faces, np.uint32),
                uvs=None if given.uvs is None else np.array(given.uvs, np.float32),
            )
        else:
            mesh = octahedron(scale)
        if stage == "texture":
            mesh.textures.append(TexturePayload(role="base_color", png=png_rgb(8, 8, (200, 60, 30))))
        return mesh


START_GATE_ENV = "DREAMPOLISH_TEST_START_GATE"
"""A file path: while that file exists, GatedScriptedPipeline waits in its constructor."""


class GatedScriptedPipeline(ScriptedPipeline):
    """ScriptedPipeline whose construction waits while the file named by $DREAMPOLISH_TEST_START_GATE
    exists: a test holds a Ray worker's (re)start by creating the file and lets it go by removing it."""

    def __init__(self) -> None:
        gate = os.environ.get(START_GATE_ENV)
        while gate and Path(gate).exists():
            time.sleep(0.02)


# --- starting a backend in tests -----------------------------------------------------------------


@contextlib.contextmanager
def running_backend(store: Path, pipeline: type = ScriptedPipeline, **config: Any) -> Iterator[BackendServer]:
    """An in-process backend on a free loopback port; `server.endpoint` is its address."""
    server = BackendServer(ServerConfig(bind="tcp://127.0.0.1:*", store_dir=store, **config), pipeline)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def production_client(store: Path) -> Iterator[BackendClient]:
    """A client connected to an in-process backend that runs the production pipeline (what it refuses at
    submit is what an artist's request meets)."""
    from dreampolish.backend.pipeline import DreamPolishPipeline

    with running_backend(store, pipeline=DreamPolishPipeline) as server:
        client = BackendClient(server.endpoint, timeout_s=30, heartbeat_s=0.5, dead_after_s=30)
        client.connect()
        try:
            yield client
        finally:
            client.close()


def backend_command(store: Path, *args: str, pipeline: str = "tests.support.pipelines:ScriptedPipeline") -> list[str]:
    """argv of a real `dreampolish-backend serve` process (run it with PYTHONPATH=repo: `repo_env()`)."""
    return [sys.executable, "-m", "dreampolish.backend.cli", "serve", "--store", str(store),
            "--pipeline", pipeline, "--device", "cpu", *args]


def wait_until_serving(endpoint: str, proc: subprocess.Popen, timeout_s: float = 30) -> bool:
    """Wait for a backend process to answer the handshake; False if it exited first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with BackendClient(endpoint, timeout_s=1, heartbeat_s=0.3, dead_after_s=1) as c:
                c.connect()
                return True
        except Exception:
            time.sleep(0.1)
    if proc.poll() is None:
        raise TimeoutError("backend did not come up")
    return False


def start_backend_process(store: Path, endpoint: str, *, pipeline: str = "tests.support.pipelines:ScriptedPipeline",
                          env: dict[str, str] | None = None, timeout_s: float = 30) -> subprocess.Popen:
    """A real backend process on `endpoint`, started and answering; the caller stops it by its PID."""
    proc = subprocess.Popen(backend_command(store, "--bind", endpoint, pipeline=pipeline),
                            env=repo_env() | (env or {}), stderr=subprocess.DEVNULL)
    if not wait_until_serving(endpoint, proc, timeout_s):
        raise RuntimeError(f"backend exited with {proc.returncode} before serving")
    return proc


def connected_client(endpoint: str, heartbeat_s: float = 0.5) -> BackendClient:
    """A client that has finished the handshake with the backend at `endpoint`."""
    client = BackendClient(endpoint, timeout_s=10, heartbeat_s=heartbeat_s, dead_after_s=5)
    client.connect()
    return client


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def repo_env() -> dict[str, str]:
    """Environment for a subprocess that imports tests.support.pipelines."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
