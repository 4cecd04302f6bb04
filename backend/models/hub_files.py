"""Which files of a hub checkpoint the loaders read, and how much disk they need (`models pull`).

A diffusers repository usually holds more than loading uses: original-format
checkpoints at the root (`v2-1_512-ema-pruned.ckpt`), `.bin` beside
`.safetensors`, fp16 and fp32 copies (`diffusion_pytorch_model.fp16.safetensors`),
EMA / non-EMA variants (`.ema.`, `.non_ema.`, `.nonema.`), other frameworks'
weights. Fetching the whole snapshot of SD 2.1-base is about 20 GB. The plan
here keeps, for each component folder the role loads (loading.py), its config
and tokenizer files and ONE set of safetensors weights: by default the fp16
variant where the repository has one, else the plain file (`precision="half"`:
the backend runs the priors in bf16, or fp16 on older cards, so full-precision
weights only double the download and the load; issue 28), or the plain file
first (`precision="full"`, for fp32 runs). Loading then finds that variant
from the folder (`weights_variant`).

Sizes come from the hub's metadata (huggingface_hub `HfApi.model_info(...,
files_metadata=True)`), before anything is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .specs import ModelRole, ModelSpec

ROLE_COMPONENTS: dict[ModelRole, tuple[str, ...]] = {
    "text_to_image": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "zero123": ("unet", "vae", "image_encoder", "clip_camera_projection", "scheduler"),
    "normals": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "intrinsics": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "depth": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
}
"""The subfolders loading.py reads for each role (the Marigold normals, intrinsics and depth pipelines load
exactly these five)."""

WEIGHTED_COMPONENTS = frozenset({"unet", "vae", "text_encoder", "image_encoder", "clip_camera_projection"})
"""Components that must bring weights (tokenizer and scheduler are configs only)."""

ROOT_FILES = ("model_index.json",)
"""Files at the repository root that loading reads."""

CONFIG_SUFFIXES = (".json", ".txt")
"""Configs, tokenizer vocabularies and merges."""

Precision = Literal["half", "full"]

PRECISION_PREFERENCE: dict[str, tuple[str | None, ...]] = {"half": ("fp16", None), "full": (None, "fp16")}
"""Weights kept per component, in order of preference, for each precision: "half" takes the fp16 variant
where there is one (the priors run in bf16/fp16 on a GPU: loading.choose_dtype), "full" the plain file.
EMA / non-EMA variants are other weights, not another precision, and are never fetched."""

_WEIGHT = re.compile(r"^(?P<stem>[^.]+?)(?:-\d{5}-of-\d{5})?(?:\.(?P<variant>[^.]+))?\.safetensors$")
_INDEX = re.compile(r"^(?P<stem>[^.]+)\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json$")


class HubApi(Protocol):
    """The part of huggingface_hub.HfApi the plan uses (tests pass a fake)."""

    def model_info(self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False) -> Any: ...


class PullPlanError(ValueError):
    """The repository does not hold what its role needs in a form loading can read."""


@dataclass(frozen=True)
class HubFile:
    path: str
    """Path inside the repository, e.g. "unet/diffusion_pytorch_model.safetensors"."""
    size: int
    """Bytes (0 when the hub gave no size)."""


@dataclass
class PullPlan:
    """The files of one checkpoint to fetch."""

    spec: ModelSpec
    files: list[HubFile] = field(default_factory=list)
    variants: dict[str, str | None] = field(default_factory=dict)
    """Per weighted component: None (plain weights) or the variant kept ("fp16")."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def allow_patterns(self) -> list[str]:
        """Exact paths for snapshot_download(allow_patterns=...)."""
        return [f.path for f in self.files]

    def describe(self) -> str:
        lines = [f"{self.spec.role}: {self.spec.hub_id}@{self.spec.revision}  {len(self.files)} files, "
                 f"{format_bytes(self.total_bytes)}"]
        lines += [f"    {format_bytes(f.size):>10}  {f.path}" for f in self.files]
        return "\n".join(lines)


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _weight_variant(name: str) -> tuple[bool, str | None]:
    """(is a safetensors weight or index file, its variant)."""
    for pattern in (_WEIGHT, _INDEX):
        match = pattern.match(name)
        if match:
            return True, match.group("variant")
    return False, None


def _component_files(component: str, files: dict[str, int], spec: ModelSpec, precision: Precision
                     ) -> tuple[list[HubFile], str | None]:
    prefix = component + "/"
    inside = {p[len(prefix):]: s for p, s in files.items() if p.startswith(prefix) and "/" not in p[len(prefix):]}
    configs = [HubFile(prefix + n, s) for n, s in sorted(inside.items())
               if n.endswith(CONFIG_SUFFIXES) and not _weight_variant(n)[0]]
    if component not in WEIGHTED_COMPONENTS:
        return configs, None
    by_variant: dict[str | None, list[HubFile]] = {}
    for name, size in sorted(inside.items()):
        is_weight, variant = _weight_variant(name)
        if is_weight:
            by_variant.setdefault(variant, []).append(HubFile(prefix + name, size))
    for variant in PRECISION_PREFERENCE[precision]:
        if variant in by_variant:
            return configs + by_variant[variant], variant
    raise PullPlanError(
        f"{spec.hub_id}@{spec.revision}: {component}/ has no safetensors weights loading can use "
        f"(found {sorted(inside) or 'nothing'})")


def plan_pull(spec: ModelSpec, api: HubApi, precision: Precision = "half") -> PullPlan:
    """The files of `spec` that loading reads at `precision`, with their sizes (one metadata request, no
    download)."""
    if precision not in PRECISION_PREFERENCE:
        raise PullPlanError(f"precision must be one of {', '.join(PRECISION_PREFERENCE)}, got {precision!r}")
    if spec.hub_id is None:
        raise PullPlanError(f"{spec.name} is a local folder; nothing to fetch")
    info = api.model_info(spec.hub_id, revision=spec.revision, files_metadata=True)
    files = {s.rfilename: int(getattr(s, "size", None) or 0) for s in (info.siblings or [])}
    plan = PullPlan(spec)
    plan.files += [HubFile(p, files[p]) for p in ROOT_FILES if p in files]
    for component in ROLE_COMPONENTS[spec.role]:
        chosen, variant = _component_files(component, files, spec, precision)
        if not chosen:
            raise PullPlanError(f"{spec.hub_id}@{spec.revision}: no {component}/ folder (needed by {spec.role})")
        plan.files += chosen
        if component in WEIGHTED_COMPONENTS:
            plan.variants[component] = variant
    return plan


def weights_variant(component_dir: Path, precision: Precision = "full") -> str | None:
    """The weights variant to load from a downloaded component folder: None for plain safetensors (or when
    there are none: then from_pretrained decides), else a variant that is there, by `precision`'s
    preference when the folder holds several (a pull at each precision)."""
    variants = {_weight_variant(p.name)[1] for p in component_dir.glob("*.safetensors")}
    if not variants:
        return None
    for variant in PRECISION_PREFERENCE[precision]:
        if variant in variants:
            return variant
    return sorted(v for v in variants if v)[0]
