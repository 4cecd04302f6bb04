"""The fused Triton hash encoding agrees with the PyTorch one: values, gradients w.r.t. the table and the
positions, and the double backward that analytic normals need, with the kernels run by Triton's
interpreter on the CPU. The checks run in a subprocess (tests/support/hashgrid_triton_cases.py) because
TRITON_INTERPRET must be set before Triton is first imported, and must not leak into other tests.

Tolerance: relative to the reference's largest magnitude, 1e-5 in float32 (the kernels blend and
accumulate in a different order, and the table gradient is summed by atomic adds; measured ~5e-7)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dreampolish.backend.geometry import hashgrid
from dreampolish.backend.geometry.hashgrid import HashGridConfig, HashGridEncoding

CASES = Path(__file__).resolve().parents[2] / "support" / "hashgrid_triton_cases.py"
TOL = 1e-5
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (pip install -e .[dev] brings it on Linux)")


@pytest.fixture(scope="module")
def cases() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(CASES)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=CASES.parents[2])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
@pytest.mark.parametrize("name", ["mixed", "three"])
def test_values_and_gradients_match_the_pytorch_encoding(cases, name):
    c = cases[name]
    assert 1 in c["dense"] and 0 in c["dense"]  # both the dense coarse levels and hashed ones are covered
    assert c["value"] < TOL and c["grad_x"] < TOL and c["grad_table"] < TOL, c
    # locked levels: zero output, no table gradient; clamped coordinates get no gradient
    assert c["locked_out"] == 0 and c["locked_grad"] == 0 and c["clamped_grad_x"] == 0
    assert c["reference_grad_x_scale"] > 1  # the position gradients compared are not trivially zero


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
def test_double_backward_matches_the_pytorch_encoding(cases):
    c = cases["double"]
    assert max(c.values()) < TOL, c


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
def test_fused_encoding_passes_gradcheck_and_gradgradcheck(cases):
    assert cases["gradgradcheck"] == {"gradcheck": True, "gradgradcheck": True}


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
def test_fields_analytic_normals_agree_between_encodings(cases):
    for name in ("density", "sdf"):
        c = cases["fields"][name]
        assert c["value"] < TOL and c["dloss_dtable"] < TOL and c["dloss_dtable_scale"] > 0.1, c


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
def test_kernels_compile_for_the_gpu_without_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), CUDA_VISIBLE_DEVICES="")  # a fresh cache: really compile
    proc = subprocess.run([sys.executable, str(CASES), "compile"], capture_output=True, text=True, timeout=600,
                          env=env, cwd=CASES.parents[2])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])["compile"]
    assert result["variants"] == result["compiled"] == 7


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
@needs_triton
def test_the_self_check_auto_runs_before_trusting_the_kernels_passes(cases):
    assert cases["self_check"] == {"f2": None, "f3": None}


def test_auto_falls_back_to_pytorch_where_the_kernels_fail_their_self_check(monkeypatch, caplog):
    def broken(device, n_features):
        raise RuntimeError("PassManager::run failed")  # what a Triton compile failure looks like

    monkeypatch.setattr(hashgrid, "_triton_self_check", broken)
    monkeypatch.setattr(hashgrid, "_TRITON_CHECKED", {})
    with caplog.at_level("WARNING"):
        assert hashgrid._triton_works(torch.device("cuda:7"), 2) is False
    assert "PassManager::run failed" in caplog.text and "PyTorch encoding" in caplog.text
    monkeypatch.setattr(hashgrid, "_triton_self_check", lambda device, n_features: None)
    assert hashgrid._triton_works(torch.device("cuda:7"), 2) is False  # decided once per device
    assert hashgrid._triton_works(torch.device("cuda:7"), 3) is True


def test_auto_uses_pytorch_on_the_cpu_and_triton_on_cuda_only():
    enc = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4))
    cpu = torch.rand(4, 3)
    assert not enc.uses_triton(cpu)
    meta = torch.empty(4, 3, device="meta")
    assert not enc.uses_triton(meta)
    forced = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4,
                                             implementation="torch"))
    assert not forced.uses_triton(cpu)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the error without the interpreter")
@needs_triton
def test_forcing_triton_on_cpu_tensors_without_the_interpreter_is_a_clear_error():
    enc = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4,
                                          implementation="triton"))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        enc(torch.rand(4, 3))


def test_bad_input_shape_is_a_value_error():
    enc = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4))
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        enc(torch.rand(4, 2))
