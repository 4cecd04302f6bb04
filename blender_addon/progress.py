"""The whole job's progress and a time estimate, from the step rates measured while it runs.

No bpy here: job_events feeds it the progress events and copies its answers to the panel.

    stage fraction f = step / total
    overall = (stages finished + f) / stages planned
    time left = (total - step) / r  +  (stages planned - stages finished - 1) * T
        r: steps per second of the current stage so far (its steps / its elapsed time)
        T: the mean duration of the finished stages, or the current stage's projected one
           (total / r) before any has finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobClock:
    """Progress of one job; times are time.monotonic() seconds."""

    plan: list[str]
    """The stages the job runs, in order (as sent; export, a file write, is not counted)."""
    finished: dict[str, float] = field(default_factory=dict)
    """Duration of each finished stage."""
    stage: str = ""
    stage_started: float = 0.0

    def progress(self, stage: str, step: int, total: int, now: float) -> tuple[float, float | None]:
        """-> (overall fraction, seconds left or None while there is no rate to go by)."""
        if stage not in self.plan:
            return (self.plan.index(self.stage) / len(self.plan) if self.stage else 0.0), None
        if stage != self.stage:
            if self.stage and self.stage not in self.finished:
                self.finished[self.stage] = now - self.stage_started
            self.stage, self.stage_started = stage, now
        fraction = min(1.0, step / total) if total else 0.0
        done = self.plan.index(stage)
        overall = (done + fraction) / len(self.plan)
        elapsed = now - self.stage_started
        if step <= 0 or elapsed <= 0:
            return overall, None
        rate = step / elapsed
        current_left = max(0, total - step) / rate
        per_stage = (sum(self.finished.values()) / len(self.finished)) if self.finished else total / rate
        later = len(self.plan) - done - 1
        return overall, current_left + later * per_stage


def format_eta(seconds: float | None) -> str:
    """"about 40 s left", "about 3 min left"; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"
