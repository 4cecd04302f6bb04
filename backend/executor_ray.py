"""Jobs on the GPUs of a Ray cluster (`dreampolish-backend serve --executor ray`).

The head (this process) keeps the ROUTER server, the job store and the event log. Each GPU of the
cluster gets one long-lived Ray actor (PipelineWorker, `num_gpus=1`) that builds the pipeline once and
keeps it, with its loaded models, between jobs. The head runs one thread per actor that takes jobs
from the FairQueue (executor.QueueWorkers) and calls the actor's `run`, a streaming generator: every
report of the pipeline (progress, stage result, the end) comes back as one item, in order, and the
head turns it into a stored, published event, so each event is stored once, in order, on the head.

Checkpoints: the actor runs the job in a folder of its own node, filled at the start with the job's
work folder from the store (the checkpoints of the stages finished so far); the files a stage wrote
travel back with that stage's result and are written to the store before the result is recorded, so
a stage whose result the head has is a stage the head can resume from. No shared file system is
needed.

A lost worker (its process or node gone mid-job): the head's call raises a RayActorError, the job
system queues the job again (WorkerLost) and another actor resumes it from its last finished stage;
the stage results it reports again are dropped by the store (recorded once per (stage, index)). Ray
restarts a lost actor where the cluster has a free GPU (max_restarts=-1), and its thread takes jobs
again once it answers. Only the cluster's own record says which lost actors come back: a probe sent
while Ray has not yet noticed the death fails like a probe to an actor killed for good, so the head
retires a thread only when the cluster records its actor as DEAD (killed for good, or out of
restarts), never on a failed probe alone (RayExecutor.device_usable).

Cancel: a watcher thread on the head polls the job's flags (cancel, backend stopping) and tells the
actor, whose JobContext raises at the pipeline's next check_cancel (within one step). The actor is
threaded (max_concurrency) so that the cancel call runs while the job does.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import ray
from dreampolish.protocol.errors import BAD_WORKER_FILE
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from .executor import QueueWorkers, WorkerLost
from .failures import classify_failure
from .pipeline_api import JobCancelled, JobContext, JobFailed, Pipeline, ResumePoint, RunOutcome

log = logging.getLogger(__name__)

PipelineSpec = str | Callable[[], Pipeline]
""""MODULE:CALLABLE" (as serve --pipeline), or the callable itself (it must import on every node)."""
WorkFiles = list[tuple[str, bytes]]
"""Files of a job's work folder: (path relative to it, with "/", contents)."""

CANCEL_POLL_S = 0.02
"""How often the head looks at a running job's cancel and stop flags."""
ACTOR_CONCURRENCY = 4
"""Calls one actor serves at once: its job's run, a cancel, and the health probe."""
READY_TIMEOUT_S = 300.0
"""How long the actors may take to start (building a pipeline may load models)."""
PROBE_TIMEOUT_S = 10.0
"""Wait for a lost actor to answer again (Ray restarting it) before asking once more."""
PROBE_RETRY_S = 0.5
"""Pause before probing again a lost actor whose probe failed at once (Ray has not yet noticed the
death, or is between restarts)."""


# --- work folders travel between the store and the actors ----------------------------------------


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, inode) of every file under root, by relative path. The inode tells a file
    replaced by rename (as CheckpointStore writes) even within the file system's mtime granularity."""
    if not root.is_dir():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(".tmp"):
            st = path.stat()
            out[_relative(root, path)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def read_files(root: Path, names: Iterator[str] | list[str] | None = None) -> WorkFiles:
    """The files under root (all of them, or those named), skipping half-written *.tmp files."""
    chosen = list(_tree(root)) if names is None else list(names)
    return [(name, (root / name).read_bytes()) for name in chosen if (root / name).is_file()]


def write_files(root: Path, files: WorkFiles) -> None:
    """Write files under root, each atomically (temporary name, fsync, rename) as CheckpointStore does."""
    for name, data in files:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise JobFailed(BAD_WORKER_FILE, f"a worker sent a file outside the job's folder: {name!r}")
        path = root.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".sync.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class _ChangedFiles:
    """The files of a work folder written since the last call (by size, mtime and inode)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen = _tree(root)

    def take(self) -> WorkFiles:
        now = _tree(self.root)
        changed = [name for name, stat in now.items() if self._seen.get(name) != stat]
        self._seen = now
        return read_files(self.root, changed)


# --- the worker side (inside the Ray actor) ------------------------------------------------------


class _WorkerContext:
    """pipeline_api.JobContext inside the actor: every report becomes an item for the head."""

    def __init__(self, job_id: str, work_dir: Path, device: str, items: queue.SimpleQueue,
                 cancelled: threading.Event) -> None:
        self.job_id = job_id
        self.work_dir = work_dir
        self.device = device
        self._items = items
        self._cancelled = cancelled
        self.changed = _ChangedFiles(work_dir)

    def progress(self, stage: str, step: int, total: int, losses: dict[str, float] | None = None,
                 preview_png: bytes | None = None) -> None:
        self._items.put(("progress", stage, int(step), int(total), dict(losses or {}), preview_png))

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        mesh.validate(require_faces=False)
        # The stage's checkpoint was saved before its result (pipeline.py): it travels with it.
        self._items.put(("stage_result", stage, int(index), mesh, self.changed.take()))

    def check_cancel(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was stopped by the backend")


class PipelineWorker:
    """The Ray actor of one GPU: one pipeline, built once, runs one job at a time."""

    def __init__(self, pipeline: PipelineSpec, work_root: str | None = None) -> None:
        from .server import load_pipeline_factory  # the server module is the head's; import it late

        factory = load_pipeline_factory(pipeline) if isinstance(pipeline, str) else pipeline
        self.pipeline = factory()
        gpus = ray.get_gpu_ids()
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, which torch then numbers 0.
        self.device = "cuda:0" if gpus else "cpu"
        self.label = f"gpu{gpus[0]}" if gpus else "cpu"
        self.work_root = Path(work_root or tempfile.mkdtemp(prefix="dreampolish-worker-"))
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "label": self.label, "pid": os.getpid()}

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            flag = self._cancels.get(job_id)
        if flag is not None:
            flag.set()
        return flag is not None

    def run(self, job_id: str, spec: JobSpec, resume: ResumePoint | None, files: WorkFiles) -> Iterator[tuple]:
        """Run one job; yields its reports in order, the last one ("end", kind, detail, files)."""
        work_dir = self.work_root / job_id
        shutil.rmtree(work_dir, ignore_errors=True)  # what the head sends is the job's state
        work_dir.mkdir(parents=True)
        write_files(work_dir, files)
        items: queue.SimpleQueue = queue.SimpleQueue()
        cancelled = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancelled
        ctx = _WorkerContext(job_id, work_dir, self.device, items, cancelled)
        runner = threading.Thread(target=self._run_pipeline, args=(spec, ctx, resume, items),
                                  name=f"job-{job_id}", daemon=True)
        runner.start()
        try:
            while True:
                item = items.get()
                if item[0] == "end":
                    runner.join()
                    yield (*item, ctx.changed.take())
                    return
                yield item
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)
            shutil.rmtree(work_dir, ignore_errors=True)  # the store on the head has what matters

    def _run_pipeline(self, spec: JobSpec, ctx: _WorkerContext, resume: ResumePoint | None,
                      items: queue.SimpleQueue) -> None:
        try:
            outcome = self.pipeline.run(spec, ctx, resume)
        except JobCancelled:
            items.put(("end", "cancelled", None))
        except Exception as exc:  # the head fails the job with this code and message
            log.exception("job %s failed on %s", ctx.job_id, self.label)
            items.put(("end", "failed", classify_failure(exc)))
        else:
            paused = outcome.paused_after
            items.put(("end", "paused" if paused is not None else "done", paused))


# --- the head side ---------------------------------------------------------------------------------


_LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError,
         ray.exceptions.WorkerCrashedError)
"""What a call to an actor raises when its process or node went away."""


class _CancelWatcher:
    """Polls a running job's flags on the head; tells the actor once when the job is to stop."""

    def __init__(self, ctx: JobContext, actor: Any) -> None:
        self._ctx, self._actor = ctx, actor
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"cancel-watch-{ctx.job_id}", daemon=True)

    def __enter__(self) -> _CancelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            try:
                self._ctx.check_cancel()
            except JobCancelled:
                self.stop_remote()
                return

    def stop_remote(self) -> None:
        try:
            self._actor.cancel.remote(self._ctx.job_id)
        except _LOST:
            pass  # the actor is gone: the run's own call reports it


class RayPipeline:
    """The head's Pipeline for every Ray device: checks specs locally, runs jobs on the device's actor."""

    def __init__(self, executor: RayExecutor, local: Pipeline) -> None:
        self._executor = executor
        self._local = local

    def presets(self) -> list[str]:
        return self._local.presets()

    def models(self) -> list[str]:
        models = getattr(self._local, "models", None)
        return list(models()) if callable(models) else []

    def check(self, spec: JobSpec) -> None:
        self._local.check(spec)

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        actor = self._executor.actor(ctx.device)
        log.info("job %s: starting on %s", ctx.job_id, ctx.device)
        stream = actor.run.remote(ctx.job_id, spec, resume, read_files(Path(ctx.work_dir)))
        with _CancelWatcher(ctx, actor) as watcher:
            try:
                for ref in stream:
                    end = _deliver(ray.get(ref), ctx)
                    if end is not None:
                        return end
            except _LOST as exc:
                # An actor that was only unreachable may still run the job: it is told to stop, so
                # that the job never runs twice at once when it answers again.
                watcher.stop_remote()
                self._executor.mark_lost(ctx.device)
                raise WorkerLost(f"{ctx.device}: {type(exc).__name__}") from exc
            except BaseException:
                watcher.stop_remote()  # the head cannot take the job's reports (store full ...): stop it
                raise
        raise WorkerLost(f"{ctx.device}: the job's stream ended without its end")


def _deliver(item: tuple, ctx: JobContext) -> RunOutcome | None:
    """Hand one report from the actor to the head's JobContext; the RunOutcome at the end."""
    kind = item[0]
    if kind == "progress":
        _, stage, step, total, losses, png = item
        ctx.progress(stage, step, total, losses, png)
        return None
    if kind == "stage_result":
        _, stage, index, mesh, files = item
        write_files(Path(ctx.work_dir), files)  # the checkpoint first: the result says it is finished
        ctx.stage_result(stage, index, mesh)
        return None
    _, end, detail, files = item
    write_files(Path(ctx.work_dir), files)
    if end == "cancelled":
        ctx.check_cancel()  # raises the head's reason: cancelled, or interrupted by a shutdown
        raise JobCancelled(f"job {ctx.job_id} was stopped on its worker")
    if end == "failed":
        code, message = detail
        raise JobFailed(code, message)
    return RunOutcome(paused_after=detail)


CONNECT_TIMEOUT_S = 5.0
"""How long the cluster's address may take to accept a TCP connection before serve gives up."""


def check_reachable(address: str | None) -> None:
    """Refuse a HOST:PORT that accepts no connection (ray.init would retry it for minutes). Other forms
    ("auto", "ray://…", None) are left to Ray."""
    if not address or "://" in address or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray-address must be HOST:PORT, auto or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc}); start its head with "
                              f"`ray start --head` and give its address") from exc


AUTH_HINT = (
    "If the cluster's head uses Ray's token authentication (it does when its machine had a token in "
    "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN when `ray start --head` ran), this "
    "machine needs the same token there"
)


def connect(address: str | None) -> None:
    """ray.init for serve: to the cluster at address (None: RAY_ADDRESS, a cluster started on this
    machine, or a new local one).

    Ray 2.60 decides per process whether to authenticate. `ray start --head` turns token
    authentication on when the machine has a token (Ray writes ~/.ray/auth_token the first time any
    local cluster starts), and ray.init with address=None or "auto" presents that token; ray.init with
    an explicit HOST:PORT presents none unless RAY_AUTH_MODE=token is set, so `serve --ray-address
    HOST:PORT` was refused (InvalidAuthToken) by a head started on a machine where Ray ran before.
    Here an explicit address is treated as "auto" is: a token this machine has (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is presented, unless RAY_AUTH_MODE says otherwise. Ray
    2.61 does the same for every address. Token mode is the whole process's, its own servers included:
    against a head started without authentication (its machine had no token then), such a serve
    connects but its workers never start (seen here), so that head needs RAY_AUTH_MODE=disabled for
    serve, or a restart with the token (README's recipe makes sure the head has one)."""
    if address and "://" not in address and address != "auto":
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise ConnectionError(f"{exc}. {AUTH_HINT} (README: Running on a cluster)") from exc


class RayExecutor(QueueWorkers):
    """One PipelineWorker actor per GPU of a Ray cluster, fed from one FairQueue on the head.

    address: the cluster (None: RAY_ADDRESS, a cluster started on this machine by `ray start`, or a
    new local one); resource: what one actor asks for ("GPU" = num_gpus=1; tests use a custom
    resource standing in for GPUs); workers: how many actors (default: as many as the cluster has
    of resource)."""

    def __init__(self, pipeline: PipelineSpec, address: str | None = None, *, resource: str = "GPU",
                 workers: int | None = None, work_root: str | None = None) -> None:
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            check_reachable(address)
            connect(address)
        try:
            count = int(ray.cluster_resources().get(resource, 0)) if workers is None else workers
            if count < 1:
                raise ValueError(f"the Ray cluster has no {resource} (nodes offer "
                                 f"{sorted(ray.cluster_resources())}); start its nodes with GPUs")
            self._pipeline = pipeline
            self._local: Pipeline | None = None
            self._lost: set[str] = set()
            actors, labels = self._start_actors(pipeline, resource, count, work_root)
        except BaseException:
            self._shutdown_ray()
            raise
        super().__init__(labels)
        self._actors = dict(zip(labels, actors))

    @staticmethod
    def _start_actors(pipeline: PipelineSpec, resource: str, count: int,
                      work_root: str | None) -> tuple[list[Any], list[str]]:
        # An actor holds one CPU for scheduling unless told otherwise: a resource standing in for GPUs
        # (tests, benchmarks) takes no CPU, so a 2-core machine can host 4 stand-in workers.
        need: dict[str, Any] = {"num_gpus": 1} if resource == "GPU" else {"resources": {resource: 1}, "num_cpus": 0}
        cls = ray.remote(PipelineWorker).options(
            max_concurrency=ACTOR_CONCURRENCY, max_restarts=-1, max_task_retries=0, **need
        )
        actors = [cls.remote(pipeline, work_root) for _ in range(count)]
        try:
            infos = ray.get([a.info.remote() for a in actors], timeout=READY_TIMEOUT_S)
        except BaseException:
            for a in actors:
                ray.kill(a)
            raise
        # The node's address as the cluster knows it (the one given to `ray start --node-ip-address`).
        address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        labels = [f"ray{i}@{address.get(info['node_id'], '?')}/{info['label']}" for i, info in enumerate(infos)]
        log.info("Ray workers: %s", ", ".join(labels))
        return actors, labels

    def pipeline_factory(self) -> RayPipeline:
        """BackendServer's pipeline factory: every device's pipeline is the same proxy."""
        if self._local is None:
            from .server import load_pipeline_factory

            factory = load_pipeline_factory(self._pipeline) if isinstance(self._pipeline, str) else self._pipeline
            self._local = factory()  # checks specs and names presets; runs nothing
        return RayPipeline(self, self._local)

    def actor(self, device: str) -> Any:
        return self._actors[device]

    def mark_lost(self, device: str) -> None:
        with self._count_lock:
            self._lost.add(device)

    def device_usable(self, device: str) -> bool:
        """A device whose actor was lost takes jobs again once Ray has restarted it; never if the cluster
        records it as dead for good (killed, or out of restarts).

        The head's probe and Ray's restart may come in either order: a probe sent before Ray has
        noticed the death (or while it restarts the actor) may fail at once, exactly as one sent to an
        actor killed for good. So a failed probe is never the verdict: the cluster's record of the
        actor is, and until it says DEAD the head keeps asking."""
        while device in self._lost and not self._queue_closed():
            try:
                self._probe(device)
            except ray.exceptions.GetTimeoutError:
                continue  # Ray is still restarting it (or waits for a node with a free GPU)
            except _LOST as exc:
                state = self._actor_state(device)
                if state == "DEAD":
                    return False
                log.info("worker %s is not back yet (%s; the cluster says %s)", device, type(exc).__name__, state)
                self._queue.wait_closed(PROBE_RETRY_S)
                continue
            with self._count_lock:
                self._lost.discard(device)
            log.info("worker %s is back", device)
        return not self._queue_closed()

    def _probe(self, device: str) -> None:
        """Returns once the device's actor answers; raises what a call to a lost actor raises, or
        GetTimeoutError after PROBE_TIMEOUT_S."""
        ray.get(self._actors[device].info.remote(), timeout=PROBE_TIMEOUT_S)

    def _actor_state(self, device: str) -> str:
        """The cluster's (GCS's) record of the device's actor: ALIVE, RESTARTING, PENDING_CREATION,
        DEPENDENCIES_UNREADY or DEAD ("" if it has none). Read from the GCS itself: Ray's state API
        (ray.util.state) needs the dashboard, which the head does not start."""
        from ray._private.state import actors

        record = actors(actor_id=self._actors[device]._actor_id.hex())
        return str(record.get("State", "")) if record else ""

    def _queue_closed(self) -> bool:
        return self._queue.closed

    def shutdown(self, timeout_s: float = 10.0) -> None:
        super().shutdown(timeout_s)
        for actor in self._actors.values():
            ray.kill(actor)
        self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
