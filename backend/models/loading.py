"""The one place where diffusion priors are loaded: spec -> from_pretrained -> typed model bundles.

Real checkpoints and the project's tiny models go through the same code. The
backend chooses device and dtype (bf16 on CUDA where supported, else fp16;
fp32 on the CPU). Offline mode (HF_HUB_OFFLINE=1) is respected: hub ids are
then only looked up in the local hub cache. A model that cannot be found
raises ModelNotFoundError, whose message says how to fetch it.

Every loaded network is frozen (eval mode, requires_grad False): the only
trainable weights in the priors are the LoRA adapters that guidance adds.
Attention runs through PyTorch's scaled_dot_product_attention (diffusers'
default processor), which picks flash / memory-efficient kernels on CUDA.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    MarigoldDepthPipeline,
    MarigoldIntrinsicsPipeline,
    MarigoldNormalsPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from dreampolish.protocol.errors import MODEL_MISSING
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..errors import JobFailed
from ..rng import no_seeded_block_beside
from .camera_projection import CLIPCameraProjection
from .checks import EXPECT_FILES
from .hub_files import ROLE_COMPONENTS, WEIGHTED_COMPONENTS, PullPlan, plan_pull, weights_variant
from .residency import Residency
from .specs import CameraEncoding, ModelRole, ModelSet, ModelSpec

logger = logging.getLogger(__name__)

MARIGOLD_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)
REQUIRED_FILES: dict[ModelRole, tuple[str, ...]] = {
    "text_to_image": (
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer",
        "scheduler/scheduler_config.json",
    ),
    "zero123": (
        "unet/config.json",
        "vae/config.json",
        "image_encoder/config.json",
        "clip_camera_projection/config.json",
        "scheduler/scheduler_config.json",
    ),
    # The Marigold pipelines (normals, intrinsics, depth) share the diffusers pipeline layout.
    "normals": MARIGOLD_FILES,
    "intrinsics": MARIGOLD_FILES,
    "depth": MARIGOLD_FILES,
}
"""What a checkpoint folder must hold for each role (the diffusers folder layout)."""

class ModelNotFoundError(JobFailed):
    """A configured model is not available on this machine."""

    def __init__(self, spec: ModelSpec, detail: str = ""):
        if spec.hub_id:
            how = "run `dreampolish-backend models pull` on a machine with internet"
        elif spec.in_package:
            how = "the micro priors ship with the project; rebuild them with `make micro-priors`"
        elif "tiny" in str(spec.local):
            how = "run `dreampolish-backend models pull --tiny`"
        else:
            how = "check the folder named in the models config"
        message = f"model {spec.name} ({spec.role}) not found locally; {how}"
        if detail:
            message += f" ({detail})"
        super().__init__(MODEL_MISSING, message)
        self.spec = spec


class ModelMismatchError(JobFailed):
    """A loaded checkpoint's configs contradict what its spec's `expect` pins (defaults.json)."""

    def __init__(self, spec: ModelSpec, problems: list[str]):
        super().__init__("model_mismatch", f"model {spec.name} ({spec.role}) is not the checkpoint its set "
                                           f"expects: {'; '.join(problems)}; fix the models config")
        self.spec = spec


def check_expected(spec: ModelSpec, unet: Any, scheduler: Any) -> None:
    """Raise ModelMismatchError, one clause per field (its name, the value found, the value expected), when
    the loaded UNet's or scheduler's config contradicts the spec's `expect` (specs.EXPECT_KEYS); `models
    check` reads the same fields from the files before anything is loaded (checks.architecture_problems)."""
    # each key's component is the folder its config lives in (checks.EXPECT_FILES: "unet/...", "scheduler/...")
    configs = {"unet": unet.config, "scheduler": scheduler.config}
    found = {key: configs[EXPECT_FILES[key].split("/")[0]].get(key) for key, _ in spec.expect}
    problems = [f"{key} is {found[key]!r}, expected {value!r}" for key, value in spec.expect if found[key] != value]
    if problems:
        raise ModelMismatchError(spec, problems)


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def choose_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA devices that support it, fp16 on older CUDA devices, fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def local_checkpoint_dir(spec: ModelSpec) -> Path | None:
    """The folder holding the checkpoint on this machine, or None if it is not (completely) there."""
    if spec.local is not None:
        folder = spec.local_path
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(spec.hub_id, revision=spec.revision, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    if folder is None or not all((folder / rel).exists() for rel in REQUIRED_FILES[spec.role]):
        return None
    return folder


def pull(spec: ModelSpec, plan: PullPlan | None = None, download: Callable[..., str] | None = None) -> Path:
    """Fetch the files of a hub checkpoint that loading reads (plan_pull) into the local hub cache (needs
    network); a local folder is only checked. `download` defaults to huggingface_hub.snapshot_download."""
    if spec.hub_id is None:
        folder = local_checkpoint_dir(spec)
        if folder is None:
            raise ModelNotFoundError(spec)
        return folder
    if plan is None:
        from huggingface_hub import HfApi

        plan = plan_pull(spec, HfApi())
    if download is None:
        from huggingface_hub import snapshot_download as download
    logger.info("fetching %s@%s (%d files)", spec.hub_id, spec.revision, len(plan.files))
    return Path(download(spec.hub_id, revision=spec.revision, allow_patterns=plan.allow_patterns))


def _source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """(path or hub id, from_pretrained keyword arguments) for a spec; raises if a local folder is missing."""
    if spec.local is not None:
        if local_checkpoint_dir(spec) is None:
            raise ModelNotFoundError(spec)
        return str(spec.local_path), {}
    kwargs: dict[str, Any] = {"revision": spec.revision}
    if hub_offline():
        kwargs["local_files_only"] = True
    return spec.hub_id, kwargs


def _variant(spec: ModelSpec, subfolder: str | None, dtype: torch.dtype | None) -> str | None:
    """The weights variant `models pull` kept for this component (or, for a whole pipeline, for any of its
    weighted components), read from the local folder; None when plain weights are there or it is not local.
    Where a folder holds both, a half-precision load takes the fp16 file (half the bytes read) and a
    full-precision one the plain file."""
    folder = local_checkpoint_dir(spec)
    if folder is None:
        return None
    precision = "half" if dtype in (torch.float16, torch.bfloat16) else "full"
    components = [subfolder] if subfolder else [c for c in ROLE_COMPONENTS[spec.role] if c in WEIGHTED_COMPONENTS]
    variants = {weights_variant(folder / c, precision) for c in components if (folder / c).is_dir()}
    return next((v for v in variants if v), None)


def _load(spec: ModelSpec, cls: Any, subfolder: str | None, **kwargs: Any) -> Any:
    source, base = _source(spec)
    if subfolder is not None:
        base["subfolder"] = subfolder
    if subfolder is None or subfolder in WEIGHTED_COMPONENTS:
        variant = _variant(spec, subfolder, kwargs.get("dtype"))
        if variant:
            base["variant"] = variant
    try:
        with no_seeded_block_beside():  # a model loads while another job builds its modules (backend/rng.py)
            return cls.from_pretrained(source, **base, **kwargs)
    except (OSError, ValueError) as exc:
        # OSError covers huggingface_hub's "not in the cache / cannot reach the hub" errors.
        raise ModelNotFoundError(spec, f"{type(exc).__name__} loading {subfolder or 'pipeline'}") from exc


def _freeze(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    module = module.to(device=device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module


def _load_frozen(spec: ModelSpec, cls: Any, subfolder: str, device: torch.device, dtype: torch.dtype) -> Any:
    # Loading in the target dtype avoids a full-precision copy of every weight on the way.
    return _freeze(_load(spec, cls, subfolder, dtype=dtype), device, dtype)


@dataclass
class TextToImageModels:
    """A Stable Diffusion checkpoint's parts, frozen, on one device."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    spec: ModelSpec

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """Image side the UNet was trained at (sample_size latents times the VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def pipeline(self) -> StableDiffusionPipeline:
        """A text-to-image pipeline sharing these modules (no copies)."""
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


@dataclass
class Zero123Models:
    """A Zero123-style view-conditioned checkpoint's parts, frozen, on one device."""

    unet: UNet2DConditionModel
    """Takes 8 channels: the noisy latent and the reference latent."""
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    camera_projection: CLIPCameraProjection
    scheduler: DDIMScheduler
    camera_encoding: CameraEncoding
    device: torch.device
    dtype: torch.dtype
    spec: ModelSpec


def load_text_to_image(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype | None = None) -> TextToImageModels:
    device = torch.device(device)
    dtype = dtype or choose_dtype(device)
    unet = _load_frozen(spec, UNet2DConditionModel, "unet", device, dtype)
    scheduler = _load(spec, DDIMScheduler, "scheduler")
    check_expected(spec, unet, scheduler)
    return TextToImageModels(
        unet=unet,
        vae=_load_frozen(spec, AutoencoderKL, "vae", device, dtype),
        text_encoder=_load_frozen(spec, CLIPTextModel, "text_encoder", device, dtype),
        tokenizer=_load(spec, CLIPTokenizer, "tokenizer"),
        scheduler=scheduler,
        device=device,
        dtype=dtype,
        spec=spec,
    )


def load_zero123(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype | None = None) -> Zero123Models:
    device = torch.device(device)
    dtype = dtype or choose_dtype(device)
    unet = _load_frozen(spec, UNet2DConditionModel, "unet", device, dtype)
    scheduler = _load(spec, DDIMScheduler, "scheduler")
    check_expected(spec, unet, scheduler)
    return Zero123Models(
        unet=unet,
        vae=_load_frozen(spec, AutoencoderKL, "vae", device, dtype),
        image_encoder=_load_frozen(spec, CLIPVisionModelWithProjection, "image_encoder", device, dtype),
        camera_projection=_load_frozen(spec, CLIPCameraProjection, "clip_camera_projection", device, dtype),
        scheduler=scheduler,
        camera_encoding=spec.camera_encoding,
        device=device,
        dtype=dtype,
        spec=spec,
    )


def _load_marigold(spec: ModelSpec, cls: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    device = torch.device(device)
    dtype = dtype or choose_dtype(device)
    pipe = _load(spec, cls, None, dtype=dtype)
    check_expected(spec, pipe.unet, pipe.scheduler)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        _freeze(module, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_normals(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype | None = None) -> MarigoldNormalsPipeline:
    return _load_marigold(spec, MarigoldNormalsPipeline, device, dtype)


def load_intrinsics(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype | None = None
                    ) -> MarigoldIntrinsicsPipeline:
    return _load_marigold(spec, MarigoldIntrinsicsPipeline, device, dtype)


def load_depth(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype | None = None) -> MarigoldDepthPipeline:
    return _load_marigold(spec, MarigoldDepthPipeline, device, dtype)


@dataclass
class PriorModels:
    """The models of one model set, loaded on first use and kept for the life of the backend process."""

    model_set: ModelSet
    device: torch.device
    dtype: torch.dtype | None = None
    """None: chosen from the device (choose_dtype)."""
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)
    residency: Residency | None = field(default=None, repr=False)
    """Which loaded models wait in host memory (offloading, models/residency.py)."""

    def __post_init__(self) -> None:
        if self.residency is None:
            self.residency = Residency(torch.device(self.device))

    def _get(self, role: str, load: Callable[[], Any]) -> Any:
        if role not in self._loaded:
            self._loaded[role] = load()
        return self.residency.ready(role, self._loaded[role])

    def place(self, keep: set[str]) -> int:
        """Keep on the device only the loaded models of the roles in `keep`, the others in host memory;
        the bytes moved."""
        return self.residency.place(self._loaded, keep)

    @property
    def text_to_image(self) -> TextToImageModels:
        return self._get("text_to_image",
                         lambda: load_text_to_image(self.model_set.text_to_image, self.device, self.dtype))

    @property
    def zero123(self) -> Zero123Models:
        return self._get("zero123", lambda: load_zero123(self.model_set.zero123, self.device, self.dtype))

    @property
    def normals(self) -> MarigoldNormalsPipeline:
        return self._get("normals", lambda: load_normals(self.model_set.normals, self.device, self.dtype))

    def unload(self, role: str) -> None:
        """Drop a loaded model (it loads again on next use): the reference depth estimator runs once per
        job, and kept resident it would add its 2.6 GB (bf16) to every later stage's peak."""
        self.residency.forget(role, self._loaded.get(role))
        if self._loaded.pop(role, None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def intrinsics(self) -> MarigoldIntrinsicsPipeline:
        if self.model_set.intrinsics is None:
            raise JobFailed(MODEL_MISSING, f"model set {self.model_set.name!r} has no intrinsics model (the "
                            "PBR bake's Marigold-IID); add one to the models config or set base_color_only")
        return self._get("intrinsics", lambda: load_intrinsics(self.model_set.intrinsics, self.device, self.dtype))

    @property
    def depth(self) -> MarigoldDepthPipeline | None:
        """The reference depth estimator; None when the model set names none."""
        if self.model_set.depth is None:
            return None
        return self._get("depth", lambda: load_depth(self.model_set.depth, self.device, self.dtype))
