"""The GPU stage benchmark (bench/gpu_stages.py) is not broken: its CPU smoke mode runs a job through the
real pipeline with the tiny models and ends with one JSON line holding every stage's figures, and its
time budget stops it with a note instead of letting it overrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "gpu_stages.py"
MEASURED = ("nerf", "neus", "dmtet", "polish", "texture")
ALL_STAGES = ("reference", *MEASURED, "export")
DRAFT_STEPS = {"nerf": 1200, "neus": 1000, "dmtet": 1000, "polish": 150, "texture": 1000}
"""The draft preset's step counts (backend/presets.py), which the projection must count."""


def run_bench(*args: str, timeout: float) -> tuple[dict, str]:
    """Run the script in smoke mode on the CPU; (its final JSON line, its whole stdout)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stderr[-4000:]
    return json.loads(lines[-1]), proc.stdout


@pytest.mark.slow
def test_smoke_run_reports_every_stage_with_a_projection_to_the_preset():
    result, stdout = run_bench("--presets", "draft", "--budget-s", "600", timeout=300)

    assert result["bench"] == "gpu_stages"
    assert result["device"] == "cpu" and result["smoke"] is True
    assert result["targets"] == {"standard_s": 600.0, "draft_s": 180.0, "peak_gb": 24.0}
    draft = result["presets"]["draft"]
    assert list(draft["stages"]) == list(ALL_STAGES)
    assert draft["complete"] is True and draft["note"] is None
    for stage in ALL_STAGES:
        figures = draft["stages"][stage]
        assert figures["status"] == "measured", (stage, figures)
        assert figures["projected_s"] >= 0
        assert figures["peak_gb"] is None  # no GPU memory to report on the CPU
    for stage in MEASURED:
        figures = draft["stages"][stage]
        assert figures["preset_steps"] == DRAFT_STEPS[stage]
        assert figures["ms_per_step"] > 0 and figures["steps_per_s"] > 0
        assert figures["faces"] > 0
        # The projection counts the preset's steps, not the few that ran.
        assert figures["projected_s"] >= figures["preset_steps"] * figures["ms_per_step"] / 1000 * 0.999
    nerf_phases = draft["stages"]["nerf"]["phases"]
    assert [(p["phase"], p["preset_steps"]) for p in nerf_phases] == [("low", 800), ("high", 400)]
    assert draft["stages"]["polish"]["estimator_views"] == pytest.approx(32.0, abs=0.5)
    total = sum(s["projected_s"] for s in draft["stages"].values())
    assert draft["projected_job_s"] == pytest.approx(total, abs=0.2)
    assert draft["target_job_s"] == 180.0
    assert draft["meets_time_target"] is (draft["projected_job_s"] <= 180.0)
    assert "preset draft:" in stdout and "projected job" in stdout


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_spent_budget_skips_the_measurements_with_a_note():
    result, _ = run_bench("--budget-s", "1", timeout=180)

    assert set(result["presets"]) == {"draft", "standard"}
    for figures in result["presets"].values():
        assert figures["complete"] is False
        assert figures["meets_time_target"] is None
        assert "budget" in figures["note"]
        assert all(s["status"] == "skipped" and "budget" in s["note"] for s in figures["stages"].values())
    assert result["elapsed_s"] < 60
