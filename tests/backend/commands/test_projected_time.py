"""The projection (bench/projected_time.py) is not broken: a whole tiny job runs under its counters on the
meta device, and its JSON line names every stage with the preset's step counts and positive FLOPs and ops
where the stage runs a prior. Timings are not asserted: they are the instrument's output, not a contract."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from dreampolish.backend.presets import get_preset
from torch.utils.flop_counter import FlopCounterMode

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "projected_time.py"
GUIDED = ("nerf", "neus", "dmtet", "texture")


def _load():
    spec = importlib.util.spec_from_file_location("projected_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


projected_time = _load()


@pytest.fixture(scope="module")
def tiny_projection(tiny_models):  # noqa: F811
    """The tiny preset (tiny models, small renders, 4 steps a stage) at its own sizes, projected from its
    steps after the first (NeRF, NeuS and texture, which alternate reference-only and guidance-only steps:
    after the first two, one of each kind)."""
    return projected_time.project("tiny", steps=4, geometry="full")


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_every_stage_is_projected_with_the_presets_steps(tiny_projection):
    report = tiny_projection
    line = json.loads(projected_time.json_line(report))
    preset = get_preset("tiny")
    assert line["preset"] == "tiny"
    assert list(line["stages"]) == list(projected_time.STAGES)
    for stage in projected_time.OPTIMISED:
        assert line["stages"][stage]["steps"] == getattr(preset, stage).steps
        assert line["stages"][stage]["ops_per_step"] > 0
    for stage in ("reference", "export"):
        assert line["stages"][stage]["steps"] == 1
    for stage in GUIDED:  # the guidance's UNet and VAE run every step (every other one where steps alternate)
        assert line["stages"][stage]["tflop_per_step"] > 0
    assert line["stages"]["reference"]["tflop_per_step"] > 0  # diffusion sampling
    assert line["stages"]["polish"]["once_tflop"] > 0  # the normal estimator's targets
    for stage in line["stages"].values():
        assert stage["eager_s"] >= stage["compiled_s"] >= 0
    assert line["total_eager_s"] == pytest.approx(sum(s["eager_s"] for s in line["stages"].values()), abs=0.2)


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_cpu_only_code_counts_as_its_gpu_kernels(tiny_projection):
    # the PyTorch rasteriser (DMTet, polish, texture) and the hash grid's PyTorch path (the fields) are
    # nvdiffrast's and the Triton kernels' stand-ins on the CPU
    assert tiny_projection["standin_calls"]["raster"] > 0
    assert tiny_projection["standin_calls"]["hashgrid"] > 0


def test_flops_are_flop_counter_modes():
    """The ops layer applies torch.utils.flop_counter's formulas: the same total as FlopCounterMode."""
    conv = torch.nn.Conv2d(4, 8, 3)
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(2, 4, 10, 10, requires_grad=True)

    def step():
        y = lin(conv(x).mean((2, 3)))
        y.sum().backward()

    reference = FlopCounterMode(display=False)
    with reference:
        step()
    counts = projected_time.Counts()
    with projected_time._OpLayer(counts):
        step()
    assert counts.buckets["main"].flops == reference.get_total_flops() > 0
    assert counts.buckets["main"].ops > 4  # conv, mean, addmm forward and their backward


def test_host_to_device_copies_and_meta_reads_count_as_syncs():
    counts = projected_time.Counts()
    device_side = torch.ones(4, device="meta")
    with projected_time.counting(counts):
        _ = device_side + torch.arange(4.0).to("meta")  # a host tensor copied to the device
        _ = torch.tensor([1.0, 2.0], device="cpu")  # host data placed on the (stages') device
        value = float(device_side.sum())  # a read-back: answered 0 on meta
    by_op = counts.buckets["main"].syncs_by_op
    assert value == 0.0
    assert by_op["host-to-device copy"] == 1
    assert by_op["torch.tensor(host data, device=)"] == 1
    assert by_op["aten._local_scalar_dense"] == 1


def test_an_unknown_preset_is_a_clear_error(capsys):
    assert projected_time.main(["--preset", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err
