"""The jobs this Blender follows: the one the panel shows in full (the runtime's job_id), the others
still going in its jobs list, and the history of every job on disk (job_cache.py).

Following a job means its events are applied here (job_events.py); a job is followed from its
submit's answer, again from the last stage stored after a reconnect or a restart of Blender
(attach), or by the artist from the history (Follow Job).
"""

from __future__ import annotations

from . import bridge
from .job_cache import JobCache, JobRecord
from .preferences import user_dir
from .progress import JobClock
from .protocol.client import UnknownJobError
from .protocol.messages import FINAL_EVENTS, JobList
from .reporting import background_request_failed, report_failure, runtime

GOING_STATES = ("queued", "running", "paused")
"""Backend job states of a job that is still going."""

_clocks: dict[str, JobClock] = {}
"""The followed jobs' progress clocks, by job id."""
_followed_on: dict[str, int] = {}
"""The connection (bridge.generation()) on which each job's events were last asked for (its submit or
an attach): a job is followed on that connection only, and must be attached again after any reconnect."""


def job_cache() -> JobCache:
    """The jobs on disk, under the extension's user directory."""
    return JobCache(user_dir("jobs"))


def clock(job_id: str) -> JobClock | None:
    return _clocks.get(job_id)


def job_item(rt, job_id: str):
    """The jobs list's item of job_id, or None."""
    return next((item for item in rt.jobs if item.job_id == job_id), None)


def follow(rt, job_id: str, state: str, target: str = "") -> None:
    """Show job_id in full from its start (its record on disk gives its prompt and stage plan)."""
    rt.failure = ""
    rt.job_id = job_id
    rt.job_state = state
    rt.last_seq = 0
    rt.stage = ""
    rt.step = rt.total = 0
    rt.progress = rt.overall = 0.0
    rt.eta_s = -1.0
    rt.paused_stage = ""
    rt.target_object = target
    record = job_cache().load_record(job_id)
    for i in reversed(range(len(rt.jobs))):  # the list shows jobs still going
        if rt.jobs[i].state in FINAL_EVENTS:
            rt.jobs.remove(i)
    item = job_item(rt, job_id) or rt.jobs.add()
    item.job_id, item.state, item.stage, item.progress, item.paused_stage = job_id, state, "", 0.0, ""
    item.prompt = record.prompt if record is not None else ""
    _clocks[job_id] = JobClock(plan=list(record.plan) if record is not None and record.plan else [])
    if bridge.is_connected():
        _followed_on[job_id] = bridge.generation()  # submitted on this connection: its events come here


def shown_job_state(rt) -> str:
    """The state of the job shown in full as the jobs list has it ("" when it is not going): what the
    panel shows again once a request that borrowed the job state (a submit) has failed."""
    item = job_item(rt, rt.job_id) if rt.job_id else None
    return item.state if item is not None and item.state in GOING_STATES else ""


def follow_paused(rt, job_id: str) -> None:
    """Show a paused job already in the list in full (a picked seed variant), keeping what it reported."""
    item = job_item(rt, job_id)
    rt.job_id, rt.job_state = job_id, "paused"
    rt.paused_stage = item.paused_stage if item is not None else ""
    rt.stage, rt.step, rt.total, rt.progress = "", 0, 0, 0.0
    record = job_cache().load_record(job_id)
    rt.target_object = record.target_object if record is not None else ""


def attach(rt, job_id: str) -> None:
    """Follow a job of the history that is still going on the backend, from the last stage result
    this Blender stored (its later events are replayed): its stages land in the job's objects."""
    record = job_cache().load_record(job_id)
    item = job_item(rt, job_id)
    # A job still going in the list and followed on this very connection (submitted, or attached with
    # the welcome) is not attached again: that would replay what it sent since then, and a stage result
    # among that would be imported twice. One followed on an earlier connection must be: its events
    # went with that connection.
    followed = (item is not None and item.state in GOING_STATES and bridge.is_connected()
                and _followed_on.get(job_id) == bridge.generation())
    follow(rt, job_id, record.status if record is not None else "queued",
           target=record.target_object if record is not None else "")
    rt.last_seq = record.last_seq if record is not None else 0
    if not followed:
        attach_request(job_id, rt.last_seq)
    rt.message = f"Following job {job_id} again"


def attach_request(job_id: str, last_seq: int) -> None:
    """Ask the backend for the job's events after last_seq; a job it no longer has is marked gone."""
    def attach_flow(client):
        try:
            yield from client.attach_flow(job_id, last_seq)
        except UnknownJobError:
            return False  # deleted or expired on the backend
        return True

    def attached(known: bool) -> None:
        if not known:
            _job_gone(runtime(), job_id)

    if bridge.request("Attach", attach_flow, on_reply=attached, on_error=background_request_failed) is not None:
        _followed_on[job_id] = bridge.generation()


def follow_again(rt) -> None:
    """After any welcome (a reconnection try, or Connect pressed): carry on following every job that
    was going before it, the one shown in full too whatever a failed request left in the panel's job
    state (a submit made while the backend was down clears it); the backend's job list then brings
    the history up to date and, after a restart of Blender, re-attaches a job still going."""
    if rt.job_id and rt.job_state not in GOING_STATES + ("submitting",):
        rt.job_state = shown_job_state(rt) or rt.job_state
    cache = job_cache()
    going = [item.job_id for item in rt.jobs if item.state in GOING_STATES]
    if rt.job_id and rt.job_state in GOING_STATES and rt.job_id not in going:
        going.append(rt.job_id)
    for job_id in going:
        if job_id == rt.job_id:
            attach_request(job_id, rt.last_seq)
        else:
            record = cache.load_record(job_id)
            attach_request(job_id, record.last_seq if record is not None else 0)
    request_job_list()


def _job_gone(rt, job_id: str) -> None:
    """A job this Blender followed that the backend no longer has (deleted, expired, another store):
    it is not shown as going on for ever."""
    job_cache().update_record(job_id, status="failed")
    item = job_item(rt, job_id)
    if item is not None:
        item.state = "failed"
    if rt.job_id == job_id:
        rt.job_state = "failed"
        report_failure(f"Job {job_id} is no longer on the backend (deleted, or expired there); "
                       "its stages already imported stay in the scene.")
    refresh_history(rt)


def request_job_list() -> bool:
    """Ask for the backend's jobs: the history's states are brought up to date, and the newest job
    of ours still going is followed when the panel follows none. False when not connected."""
    return bridge.request("List jobs", lambda client: client.list_jobs_flow(),
                          on_reply=_jobs_listed, on_error=background_request_failed) is not None


def _jobs_listed(payload) -> None:
    rt = runtime()
    # BackendClient.list_jobs() answers the JobList's rows.
    infos = payload.jobs if isinstance(payload, JobList) else payload
    cache = job_cache()
    ours = [info for info in infos if cache.load_record(info.job_id) is not None]
    for info in ours:
        cache.update_record(info.job_id, status=info.state)
    refresh_history(rt)
    going = [i for i in ours if i.state in GOING_STATES]
    if going and not (rt.job_id and rt.job_state in GOING_STATES + ("submitting",)):
        attach(rt, max(going, key=lambda i: i.created_unix).job_id)


def refresh_history(rt=None) -> None:
    """Mirror the job records on disk into the panel's history list."""
    rt = rt or runtime()
    records: list[JobRecord] = job_cache().history()
    rt.history.clear()
    for r in records:
        item = rt.history.add()
        item.job_id, item.prompt, item.seed = r.job_id, r.prompt, r.seed
        item.preset, item.mode, item.status = r.preset, r.mode, r.status
        item.last_stage = r.stages[-1] if r.stages else ""
    rt.history_index = min(rt.history_index, max(len(records) - 1, 0))
