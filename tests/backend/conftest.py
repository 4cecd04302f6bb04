"""The backend suite's shared fixtures: the tiny models (built once per test session) as a model cache and
as loaded priors, and orbit cameras. Helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from dreampolish.backend.models.loading import PriorModels
from dreampolish.backend.models.specs import MODEL_DIR_ENV
from dreampolish.backend.models.tiny import build_tiny_models

from tests.support.priors import orbit_camera_batch, tiny_model_set


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache folder (what DREAMPOLISH_MODEL_DIR names) holding the tiny models under tiny/,
    built once per test session (a second request reuses the finished build)."""
    cache = tmp_path_factory.getbasetemp() / "model-cache"
    build_tiny_models(cache / "tiny")
    return cache


@pytest.fixture(scope="session")
def tiny_model_root(model_cache_dir: Path) -> Path:
    return model_cache_dir / "tiny"


@pytest.fixture
def tiny_priors(tiny_model_root: Path) -> PriorModels:
    """Freshly loaded tiny models on the CPU (fresh per test: guidance adds LoRA adapters to the UNet)."""
    return PriorModels(tiny_model_set(tiny_model_root), torch.device("cpu"))


@pytest.fixture
def orbit():
    """orbit_camera_batch(elevation_deg, azimuth_deg, distance=3.8, fovy_deg=20, size=32) -> CameraBatch."""
    return orbit_camera_batch


@pytest.fixture
def fresh_priors(tiny_model_root: Path):
    """A factory of independently loaded tiny models (a second UNet, for side-by-side objectives)."""
    return lambda: PriorModels(tiny_model_set(tiny_model_root), torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_model_cache(model_cache_dir: Path) -> Path:
    """The model cache holding the tiny models (the same folder as model_cache_dir)."""
    return model_cache_dir


@pytest.fixture(scope="module")
def tiny_models(tiny_model_cache: Path) -> Iterator[Path]:
    """The tiny models as the model cache that the `tiny` preset's model set loads from."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODEL_DIR_ENV, str(tiny_model_cache))
        yield tiny_model_cache
