"""Tiny, randomly initialised models of exactly the classes the real priors use.

They let every stage run end to end on a CPU in seconds, with no download:
the builder saves them with `save_pretrained` into the model cache folder, and
the pipeline loads them through the same `from_pretrained` code as real
checkpoints (backend/models/loading.py). Building is seeded, so two builds are
identical. The tokenizer's vocabulary (the 256 byte symbols of CLIP's
byte-level BPE, with and without the end-of-word mark, and no merges) is
written here, since CLIPTokenizer cannot be built without vocab.json/merges.txt.

Layout written under `root` (default <model cache>/tiny):
    text_to_image/   a StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer, scheduler)
    zero123/         unet (8 input channels), vae, image_encoder, feature_extractor,
                     clip_camera_projection, scheduler  (the layout of the diffusers Zero123 conversions)
    normals/         a MarigoldNormalsPipeline folder
    intrinsics/      a MarigoldIntrinsicsPipeline folder with Marigold-IID-Appearance's targets
                     (albedo; roughness and metallicity stacked in "material")
    depth/           a MarigoldDepthPipeline folder (affine-invariant depth, as prs-eth/marigold-depth-v1-1)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

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
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from .camera_projection import CLIPCameraProjection
from .specs import tiny_model_dir

logger = logging.getLogger(__name__)

BUILD_MARKER = "tiny_models.json"
"""Written last into the root; its presence means a complete build of this format version."""
TINY_FORMAT_VERSION = 3
"""2: the intrinsics model was added; 3: the depth model."""


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the tiny models (small enough for a CPU test suite, same classes as the real ones)."""

    seed: int = 0
    """Seed of every random initialisation."""
    unet_channels: tuple[int, int] = (32, 64)
    """UNet block widths (two levels: latents must be divisible by 2)."""
    vae_channels: tuple[int, int] = (32, 64)
    """VAE block widths; two levels make the VAE downsample by 2 (the real one by 8)."""
    text_width: int = 32
    """CLIP text/vision hidden size and the UNets' cross-attention width."""
    latent_size: int = 16
    """UNet sample size in latent pixels (its native image side is latent_size * 2)."""


# SD 2.1-base's training noise schedule, shared by every tiny model.
SD21_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable unicode symbol table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def write_tiny_tokenizer_files(folder: Path) -> CLIPTokenizer:
    """Write vocab.json + merges.txt of a byte-level CLIP vocabulary and load a CLIPTokenizer from them."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token="<|endoftext|>")


def _text_encoder(cfg: TinyModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    torch.manual_seed(cfg.seed + 1)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=2 * cfg.text_width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=cfg.text_width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _unet(cfg: TinyModelConfig, in_channels: int, seed_offset: int, out_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(cfg.seed + seed_offset)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _vae(cfg: TinyModelConfig, seed_offset: int) -> AutoencoderKL:
    torch.manual_seed(cfg.seed + seed_offset)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=cfg.latent_size * 2,
    )


def build_text_to_image(folder: Path, cfg: TinyModelConfig) -> None:
    tokenizer = write_tiny_tokenizer_files(folder / "_tokenizer_src")
    pipe = StableDiffusionPipeline(
        vae=_vae(cfg, 2),
        text_encoder=_text_encoder(cfg, tokenizer),
        tokenizer=tokenizer,
        unet=_unet(cfg, in_channels=4, seed_offset=3),
        scheduler=DDIMScheduler(**SD21_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer_src")


def build_zero123(folder: Path, cfg: TinyModelConfig) -> None:
    image_size = cfg.latent_size * 2
    torch.manual_seed(cfg.seed + 4)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=cfg.text_width,
            intermediate_size=2 * cfg.text_width,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=8,
            projection_dim=cfg.text_width,
        )
    )
    torch.manual_seed(cfg.seed + 5)
    projection = CLIPCameraProjection(embedding_dim=cfg.text_width, additional_embeddings=4)
    save_zero123_folder(folder, _unet(cfg, in_channels=8, seed_offset=6), _vae(cfg, 7), image_encoder, projection)


def save_zero123_folder(folder: Path, unet: UNet2DConditionModel, vae: AutoencoderKL,
                        image_encoder: CLIPVisionModelWithProjection, projection: CLIPCameraProjection) -> None:
    """The folder layout of the diffusers Zero123 conversions (what loading.load_zero123 reads)."""
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    image_encoder.save_pretrained(folder / "image_encoder")
    side = int(image_encoder.config.image_size)
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        folder / "feature_extractor")
    projection.save_pretrained(folder / "clip_camera_projection")
    DDIMScheduler(**SD21_SCHEDULER).save_pretrained(folder / "scheduler")


def _save_marigold(folder: Path, cfg: TinyModelConfig, pipeline_cls: type, seed_offset: int, in_channels: int,
                   out_channels: int = 4, **pipeline_options) -> None:
    """A tiny Marigold pipeline of `pipeline_cls` (UNet, VAE, text encoder, tokenizer, DDIM), saved to folder."""
    tokenizer = write_tiny_tokenizer_files(folder / "_tokenizer_src")
    pipe = pipeline_cls(
        unet=_unet(cfg, in_channels=in_channels, seed_offset=seed_offset, out_channels=out_channels),
        vae=_vae(cfg, seed_offset + 1),
        scheduler=DDIMScheduler(**SD21_SCHEDULER),
        text_encoder=_text_encoder(cfg, tokenizer),
        tokenizer=tokenizer,
        default_denoising_steps=1,
        default_processing_resolution=cfg.latent_size * 2,
        **pipeline_options,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer_src")


def build_normals(folder: Path, cfg: TinyModelConfig) -> None:
    _save_marigold(folder, cfg, MarigoldNormalsPipeline, 8, in_channels=8, prediction_type="normals",
                   use_full_z_range=True)


IID_APPEARANCE_TARGETS = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb"},
    "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
    "roughness": {"prediction_space": "linear"},
    "metallicity": {"prediction_space": "linear"},
}
"""target_properties of prs-eth/marigold-iid-appearance-v1-1's model_index.json (guidance/intrinsics.py)."""


def build_intrinsics(folder: Path, cfg: TinyModelConfig) -> None:
    n_targets = len(IID_APPEARANCE_TARGETS["target_names"])
    # The image latent and one latent per target in, one latent per target out (as the real UNet: 12 -> 8).
    _save_marigold(folder, cfg, MarigoldIntrinsicsPipeline, 10, in_channels=4 * (1 + n_targets),
                   out_channels=4 * n_targets, prediction_type="intrinsics", target_properties=IID_APPEARANCE_TARGETS)


def build_depth(folder: Path, cfg: TinyModelConfig) -> None:
    # prediction_type, scale_invariant and shift_invariant as in prs-eth/marigold-depth-v1-1's model_index.json
    _save_marigold(folder, cfg, MarigoldDepthPipeline, 12, in_channels=8, prediction_type="depth",
                   scale_invariant=True, shift_invariant=True)


TINY_MODELS = ("text_to_image", "zero123", "normals", "intrinsics", "depth")
"""The folders a build writes under its root (build_tiny_models' builders, in order)."""


def tiny_models_present(root: Path | None = None) -> bool:
    """A complete build of this format: the marker says so and every model folder is there (a marker
    written by another version of the builder into a shared cache must not hide a missing model)."""
    root = root or tiny_model_dir()
    marker = root / BUILD_MARKER
    if not marker.is_file() or not all((root / name).is_dir() for name in TINY_MODELS):
        return False
    try:
        return json.loads(marker.read_text()).get("format") == TINY_FORMAT_VERSION
    except (OSError, ValueError):
        return False


def build_tiny_models(root: Path | None = None, cfg: TinyModelConfig | None = None, force: bool = False) -> Path:
    """Build and save every tiny model under `root` (default <model cache>/tiny); returns `root`.

    A finished build is reused unless `force`. Each model is written to a temporary folder first and
    moved into place, so an interrupted build never leaves a half-written model behind.
    """
    root = Path(root) if root is not None else tiny_model_dir()
    cfg = cfg or TinyModelConfig()
    if tiny_models_present(root) and not force:
        logger.info("tiny models already built in %s", root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / BUILD_MARKER).unlink(missing_ok=True)
    builders = {"text_to_image": build_text_to_image, "zero123": build_zero123, "normals": build_normals,
                "intrinsics": build_intrinsics, "depth": build_depth}
    for name in TINY_MODELS:
        build = builders[name]
        staging = root / f".{name}.building"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging, cfg)
        shutil.rmtree(root / name, ignore_errors=True)
        staging.rename(root / name)
        logger.info("built tiny %s model in %s", name, root / name)
    (root / BUILD_MARKER).write_text(json.dumps({"format": TINY_FORMAT_VERSION, "seed": cfg.seed}))
    return root
