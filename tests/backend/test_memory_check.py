"""The backend says before a job starts when its preset needs more GPU memory than the card has (the dry
run's figures against torch.cuda.get_device_properties(i).total_memory; a fake card here)."""

from __future__ import annotations

import pytest
import torch
from dreampolish.backend import memory_check
from dreampolish.backend.memory_check import PRESET_PEAK_GB, check_memory
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.presets import preset_names
from dreampolish.protocol.job import JobSpec

from tests.support.recording import BackendStopped, RecordingContext

GB = 10**9


def card(gb: float):
    return lambda device: int(gb * GB)


def test_a_preset_above_the_card_s_memory_is_reported_and_one_below_is_not():
    cuda = torch.device("cuda", 0)
    short = check_memory("standard", cuda, card(16))
    assert short is not None and short.losses() == {"memory_needed_gb": 22.68, "device_memory_gb": 16.0}
    assert "22.7 GB" in short.message() and "16.0 GB" in short.message()
    assert check_memory("standard", cuda, card(24)) is None
    assert check_memory("draft", cuda, card(16)) is None
    assert check_memory("high", cuda, card(80)) is None


def test_only_cuda_cards_and_presets_with_a_figure_are_checked():
    assert check_memory("standard", torch.device("cpu")) is None  # no card: nothing to compare
    assert check_memory("tiny", torch.device("cuda", 0), card(1)) is None
    assert check_memory("micro", torch.device("cuda", 0), card(1)) is None
    assert set(PRESET_PEAK_GB) == set(preset_names()) - {"tiny", "micro"}


def test_the_job_s_first_progress_event_carries_the_shortfall(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_check, "device_total_memory", card(16))
    ctx = RecordingContext(tmp_path, stop_in="reference")
    with pytest.raises(BackendStopped):  # stopped before the first stage does any work
        DreamPolishPipeline().run(JobSpec("a vase", preset="standard"), ctx)
    assert ctx.progress_events[0][:4] == ("reference", 0, 0, {"memory_needed_gb": 22.68, "device_memory_gb": 16.0})


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
