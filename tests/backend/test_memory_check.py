"""The backend compares a preset's dry-run figures (backend/memory_figures.py) with the card it runs on,
before the job starts: it offloads idle priors where only that fits ("auto"), says so in the job's first
progress event, warns where even that does not fit, and refuses such a preset at submit (a fake card here)."""

from __future__ import annotations

import pytest
import torch
from dreampolish.backend import memory_check
from dreampolish.backend.memory_check import HEADROOM_GB, check_memory, plan_memory, preset_peak_gb
from dreampolish.backend.memory_figures import DRY_RUN_GB
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.presets import preset_names
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.messages import PRIORS_OFFLOADED

from tests.support.pipelines import running_backend
from tests.support.recording import BackendStopped, RecordingContext

GB = 10**9
CUDA = torch.device("cuda", 0)


def card(gb: float):
    return lambda device: int(gb * GB)


def test_the_figures_are_the_dry_run_s_peaks_with_and_without_offloading():
    assert "standard" in DRY_RUN_GB
    for preset in DRY_RUN_GB:
        assert preset_peak_gb(preset, False) == max(DRY_RUN_GB[preset]["none"].values())
        assert preset_peak_gb(preset, True) == max(DRY_RUN_GB[preset]["priors"].values())
        assert preset_peak_gb(preset, True) < preset_peak_gb(preset, False)
    assert preset_peak_gb("refine", False) == preset_peak_gb("draft", False)  # FIGURE_OF
    assert preset_peak_gb("tiny", False) is None and preset_peak_gb("micro", False) is None
    assert {p for p in preset_names() if preset_peak_gb(p, False) is not None} == set(DRY_RUN_GB) | (
        {"refine"} if "draft" in DRY_RUN_GB else set())


def test_auto_offloads_exactly_when_only_offloading_fits_the_card():
    plain, offloaded = preset_peak_gb("standard", False), preset_peak_gb("standard", True)
    roomy = plan_memory("standard", "auto", CUDA, card(plain + HEADROOM_GB))
    assert (roomy.offload, roomy.fits, roomy.losses()) == (False, True, {})
    tight = plan_memory("standard", "auto", CUDA, card(offloaded + HEADROOM_GB + 0.1))
    assert (tight.offload, tight.chosen, tight.fits, tight.needed_gb) == (True, True, True, offloaded)
    assert tight.losses() == {PRIORS_OFFLOADED: 1.0}
    assert plan_memory("standard", "none", CUDA, card(offloaded + HEADROOM_GB + 0.1)).offload is False
    assert plan_memory("standard", "priors", CUDA, card(80)).offload is True  # asked for, done
    assert plan_memory("standard", "auto", torch.device("cpu")).offload is False  # no card: nothing to gain


def test_a_preset_above_the_card_even_offloaded_is_reported_and_one_below_is_not():
    offloaded = preset_peak_gb("standard", True)
    short = check_memory("standard", CUDA, card(offloaded), offload="auto")
    assert short is not None and short.offload
    assert short.losses() == {"memory_needed_gb": round(offloaded, 2), "device_memory_gb": round(offloaded, 2),
                              PRIORS_OFFLOADED: 1.0}
    assert f"{offloaded:.1f} GB" in short.message() and "host memory" in short.message()
    assert check_memory("standard", CUDA, card(80), offload="auto") is None
    assert check_memory("standard", torch.device("cpu")) is None  # no card: nothing to compare
    assert check_memory("tiny", CUDA, card(1)) is None and check_memory("micro", CUDA, card(1)) is None


def test_a_preset_that_cannot_fit_even_offloaded_is_refused_at_submit_with_the_figure_and_the_card():
    offloaded = preset_peak_gb("standard", True)
    with pytest.raises(ValidationError) as refused:
        memory_check.check_preset_fits("standard", "auto", {"cuda:0": int(offloaded * GB)})
    assert f" {offloaded:.1f} GB of GPU memory" in str(refused.value) and f"has {offloaded:.1f} GB" in str(refused.value)
    # fits offloaded: accepted (it runs offloaded); offload=none on that card is refused, naming the way out
    memory_check.check_preset_fits("standard", "auto", {"cuda:0": int((offloaded + HEADROOM_GB + 0.1) * GB)})
    with pytest.raises(ValidationError, match="with offload=priors it would need"):
        memory_check.check_preset_fits("standard", "none", {"cuda:0": int((offloaded + HEADROOM_GB + 0.1) * GB)})
    memory_check.check_preset_fits("standard", "auto", {"cuda:0": GB, "cpu": 64 * GB})  # the CPU worker runs it


def test_the_backend_refuses_such_a_preset_at_submit_and_announces_the_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_check, "device_memory", lambda device: 6 * GB)
    with running_backend(tmp_path, DreamPolishPipeline, devices=("cuda:0",)) as server, \
            BackendClient(server.endpoint, timeout_s=30) as client:
        welcome = client.connect()
        assert welcome.preset_memory_gb["standard"] == round(preset_peak_gb("standard", True), 1)  # offloaded
        assert "tiny" not in welcome.preset_memory_gb
        with pytest.raises(RequestRejected) as refused:
            client.submit(JobSpec("a vase", preset="standard"))
        assert "this card has 6.0 GB" in refused.value.message
        assert client.list_jobs() == []  # nothing was queued


def test_the_job_s_first_progress_event_says_it_runs_offloaded(tmp_path, monkeypatch):
    offloaded = preset_peak_gb("standard", True)
    monkeypatch.setattr(memory_check, "device_total_memory", card(offloaded + HEADROOM_GB + 0.1))
    ctx = RecordingContext(tmp_path, stop_in="reference")
    with pytest.raises(BackendStopped):  # stopped before the first stage does any work
        DreamPolishPipeline().run(JobSpec("a vase", preset="standard"), ctx)
    assert ctx.progress_events[0][:4] == ("reference", 0, 0, {PRIORS_OFFLOADED: 1.0})


def test_a_job_that_fits_starts_without_a_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_check, "device_total_memory", card(80))
    ctx = RecordingContext(tmp_path, stop_in="reference")
    ctx.check_cancel = lambda: (_ for _ in ()).throw(BackendStopped("before the first stage"))
    with pytest.raises(BackendStopped):
        DreamPolishPipeline().run(JobSpec("a vase", preset="standard"), ctx)
    assert ctx.progress_events == []


def test_a_job_on_a_card_where_nvdiffrast_fails_completes_with_pytorch_and_says_so(tmp_path, monkeypatch,
                                                                                     tiny_model_cache):  # noqa: F811
    # nvdiffrast imports but cannot create its context (no nvcc to build its CUDA code): the job's first
    # progress event says the slower rasteriser is in use, and the job completes with it. Only the device
    # the rasteriser is asked about is a card's: the job itself runs on the CPU.
    import sys
    import types

    from dreampolish.backend.render import rasterize
    from dreampolish.protocol.messages import SLOW_RASTERIZER

    def no_context(device=None):
        raise RuntimeError("Ninja is required to load C++ extensions")

    package, module = types.ModuleType("nvdiffrast"), types.ModuleType("nvdiffrast.torch")
    module.RasterizeCudaContext, package.torch = no_context, module
    monkeypatch.setitem(sys.modules, "nvdiffrast", package)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", module)
    monkeypatch.setattr(rasterize, "_PROBED", {})
    on_card = rasterize.MeshRasterizer.fallback
    monkeypatch.setattr(rasterize.MeshRasterizer, "fallback", lambda self, device: on_card(self, "cuda:0"))
    ctx = RecordingContext(tmp_path)
    options = {"rasterizer": "auto", **{f"{s}.steps": 2 for s in ("nerf", "neus", "dmtet", "polish", "texture")}}
    DreamPolishPipeline().run(JobSpec("a red cone", preset="tiny", options=options), ctx)
    assert ctx.progress_events[0][:4] == ("reference", 0, 0, {SLOW_RASTERIZER: 1.0})
    assert [r[0] for r in ctx.results][-2:] == ["texture", "export"]  # the job completed
