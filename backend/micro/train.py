"""Train the micro priors on the procedural world (world.py) and save them as diffusers folders.

Three priors, each of the classes and folder layout of the real role it stands in for
(backend/models/loading.py loads them through the same `from_pretrained` code):

- text_to_image: a StableDiffusionPipeline folder. A small AutoencoderKL (factor 4: 64 px images,
  16 x 16 x 4 latents), a CLIPTextModel over the world's words (`write_word_tokenizer`), a
  UNet2DConditionModel trained with SD 2.1-base's noise schedule and epsilon loss, captions dropped
  10 % of the time for classifier-free guidance.
- zero123: the diffusers Zero123 layout. UNet of 8 input channels (noisy target latent and the
  reference's unscaled posterior mode), a CLIPVisionModelWithProjection whose embedding goes with the
  relative camera (guidance/zero123.py relative_camera, "delta_radius") through CLIPCameraProjection
  into the single cross-attention token; both conditions dropped together 10 % of the time, as the
  guidance's CFG drops them. Trained on pairs of views of one object.
- normals: a MarigoldNormalsPipeline folder. Its UNet takes the image latent and the noisy normal
  latent (8 channels) with the empty prompt's embedding and is trained with v-prediction and
  "trailing" timesteps, as Marigold v1-1 (its scheduler config), weighted to the last timestep so
  that one denoising step (`default_denoising_steps` 1) gives the estimate.

The VAE is trained first, on colour renders and on normal maps (Marigold decodes normals through the
same VAE), and is shared by the three. Everything is seeded; weights are saved in float16
(safetensors) and load in float32 on the CPU.

Run: `python -m dreampolish.backend.micro.train --out backend/micro/weights` (about 35 minutes on two
CPU cores; `--scale 0.1` for a quick smoke run).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    MarigoldNormalsPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import Tensor
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from ..guidance.zero123 import CLIP_MEAN, CLIP_STD, ReferenceView, relative_camera
from ..models.camera_projection import CLIPCameraProjection
from ..models.tiny import SD21_SCHEDULER, _bytes_to_unicode, save_zero123_folder
from . import world

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).with_name("weights")
"""Where the shipped micro priors live (the `micro` model set's folders)."""

MARIGOLD_SCHEDULER = {**SD21_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
"""Marigold v1-1's DDIM settings: v-prediction, trailing timesteps (one step starts at t = 999)."""


@dataclass(frozen=True)
class MicroTrainConfig:
    seed: int = 0
    world: world.WorldConfig = world.WorldConfig()
    width: int = 64
    """Text/vision hidden size and cross-attention width."""
    max_tokens: int = 32
    unet_channels: tuple[int, ...] = (64, 128, 128)
    """Text-to-image and Zero123 UNet widths (16 -> 8 -> 4 latent pixels)."""
    normals_channels: tuple[int, ...] = (32, 64, 64)
    """The normal estimator's UNet widths (it is close to a regression, and needs less)."""
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_steps: int = 600
    text_steps: int = 1800
    zero123_steps: int = 1800
    normals_steps: int = 700
    batch: int = 32
    lr: float = 5e-4
    caption_dropout: float = 0.1
    background_phrase: float = 0.5
    """Share of captions that end with the reference stage's background cue."""

    def scaled(self, factor: float) -> MicroTrainConfig:
        steps = {k: max(2, int(getattr(self, k) * factor)) for k in ("vae_steps", "text_steps", "zero123_steps", "normals_steps")}
        return replace(self, **steps)


# -- tokenizer -----------------------------------------------------------------------------------------------


def write_word_tokenizer(folder: Path, words: list[str], max_tokens: int) -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer whose merges spell each vocabulary word as one token; any other
    text still tokenizes, byte by byte.

    BPE applies the lowest-ranked merge present first, so one word's merges can split another (the
    "o r" of "orange" inside "torus"). Merges are therefore added until every word comes out whole:
    each round tokenizes the words and joins the first two pieces of any word still in pieces."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(_bytes_to_unicode().values())
    base = [*symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []

    def write() -> CLIPTokenizer:
        vocab = {s: i for i, s in enumerate(base)}
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
        vocab["<|startoftext|>"] = len(vocab)
        vocab["<|endoftext|>"] = len(vocab)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_tokens, pad_token="<|endoftext|>")

    tokenizer = write()
    for _ in range(sum(len(w) for w in words)):
        split = [pieces for w in words if len(pieces := tokenizer.tokenize(w)) > 1]
        if not split:
            return tokenizer
        for pieces in split:
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
        tokenizer = write()
    raise RuntimeError("the vocabulary's merges did not converge")


# -- models --------------------------------------------------------------------------------------------------


def _vae(cfg: MicroTrainConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_channels,
                         layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=cfg.world.size)


def _unet(cfg: MicroTrainConfig, in_channels: int, channels: tuple[int, ...] | None = None) -> UNet2DConditionModel:
    channels = channels or cfg.unet_channels
    n = len(channels)
    factor = 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=cfg.world.size // factor, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cfg.width, attention_head_dim=8, norm_num_groups=16)


def _text_encoder(cfg: MicroTrainConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.width, intermediate_size=2 * cfg.width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=cfg.max_tokens, projection_dim=cfg.width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def _image_encoder(cfg: MicroTrainConfig) -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=2 * cfg.width, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=cfg.width))


# -- data ----------------------------------------------------------------------------------------------------


@dataclass
class WorldData:
    rgb: Tensor
    """[N,3,H,W] in [0,1] over white."""
    normal_image: Tensor
    """[N,3,H,W] camera-frame normals in [-1,1], the background facing the viewer (0, 0, 1)."""
    captions: list[str]
    object_index: Tensor
    """[N] which object (views of one object are consecutive)."""
    elevation: Tensor
    azimuth: Tensor
    colours: list[str]
    shapes: list[str]


def render_data(cfg: world.WorldConfig) -> WorldData:
    rgb, normals, captions, index, el, az, colours, shapes = [], [], [], [], [], [], [], []
    for i, views in enumerate(world.render_world(cfg)):
        r = views.renders
        rgb.append(r.rgb.permute(0, 3, 1, 2))
        fg = (r.mask > 0.5).to(r.normal)
        facing = torch.tensor([0.0, 0.0, 1.0]).expand_as(r.normal)
        normals.append((r.normal * fg + facing * (1 - fg)).permute(0, 3, 1, 2))
        captions += views.captions
        index.append(torch.full((r.rgb.shape[0],), i))
        el.append(r.cameras.elevation_deg)
        az.append(r.cameras.azimuth_deg)
        colours.append(views.colour)
        shapes.append(views.shape)
    return WorldData(torch.cat(rgb), torch.cat(normals), captions, torch.cat(index), torch.cat(el), torch.cat(az),
                     colours, shapes)


def _schedule(step: int, total: int, lr: float) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to a tenth."""
    warm = max(1, total // 20)
    if step < warm:
        return lr * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _fit(name: str, params: list[torch.nn.Parameter], steps: int, lr: float, loss_fn) -> None:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, running = time.monotonic(), None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _schedule(step, steps, lr)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            logger.info("%s step %d/%d loss %.4f (%.0f s)", name, step, steps, running, time.monotonic() - start)


# -- training ------------------------------------------------------------------------------------------------


@torch.no_grad()
def _latents(vae: AutoencoderKL, images: Tensor) -> Tensor:
    return torch.cat([vae.encode(images[i:i + 256]).latent_dist.mode() for i in range(0, len(images), 256)])


def train_vae(cfg: MicroTrainConfig, data: WorldData, g: torch.Generator) -> tuple[AutoencoderKL, Tensor]:
    """The trained VAE (its scaling factor set) and the colour renders' latents [N,4,h,w] (unscaled posterior
    modes), which every prior trains on: encoded once here."""
    vae = _vae(cfg)
    images = torch.cat([data.rgb * 2 - 1, data.normal_image])

    def loss(step: int) -> Tensor:
        idx = torch.randint(0, images.shape[0], (cfg.batch,), generator=g)
        x = images[idx]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * post.kl().mean()

    _fit("vae", list(vae.parameters()), cfg.vae_steps, 2 * cfg.lr, loss)
    vae.eval().requires_grad_(False)
    z = _latents(vae, data.rgb * 2 - 1)
    # SD's practice: scale latents to unit variance (SD's 0.18215 was found the same way).
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    logger.info("vae scaling factor %.4f", vae.config.scaling_factor)
    return vae, z


def _noisy(scheduler: DDIMScheduler, x0: Tensor, g: torch.Generator, t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return scheduler.add_noise(x0, noise, t), noise, t


def train_text_to_image(cfg: MicroTrainConfig, data: WorldData, vae: AutoencoderKL, rgb_latents: Tensor,
                        tokenizer: CLIPTokenizer, g: torch.Generator) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    unet, text_encoder = _unet(cfg, 4), _text_encoder(cfg, tokenizer)
    scheduler = DDIMScheduler(**SD21_SCHEDULER)
    latents = rgb_latents * vae.config.scaling_factor
    background = ", isolated on a plain white background"

    def tokens(idx: Tensor) -> Tensor:
        texts = []
        for i in idx.tolist():
            u = torch.rand(2, generator=g)
            text = "" if u[0] < cfg.caption_dropout else data.captions[i] + (background if u[1] < cfg.background_phrase else "")
            texts.append(text)
        return tokenizer(texts, padding="max_length", max_length=cfg.max_tokens, truncation=True, return_tensors="pt").input_ids

    def loss(step: int) -> Tensor:
        idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=g)
        x_t, noise, t = _noisy(scheduler, latents[idx], g)
        context = text_encoder(tokens(idx))[0]
        return F.mse_loss(unet(x_t, t, encoder_hidden_states=context).sample, noise)

    _fit("text_to_image", list(unet.parameters()) + list(text_encoder.parameters()), cfg.text_steps, cfg.lr, loss)
    return unet, text_encoder


def _clip_input(rgb: Tensor, side: int) -> Tensor:
    """[N,3,H,W] in [0,1] -> CLIP-normalised [N,3,side,side], as guidance/zero123.py prepares the reference."""
    x = F.interpolate(rgb, (side, side), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean, std = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    return (x - mean) / std


def train_zero123(cfg: MicroTrainConfig, data: WorldData, vae: AutoencoderKL, rgb_latents: Tensor, g: torch.Generator
                  ) -> tuple[UNet2DConditionModel, CLIPVisionModelWithProjection, CLIPCameraProjection]:
    unet, image_encoder = _unet(cfg, 8), _image_encoder(cfg)
    projection = CLIPCameraProjection(embedding_dim=cfg.width, additional_embeddings=4)
    scheduler = DDIMScheduler(**SD21_SCHEDULER)
    unscaled = rgb_latents
    scaled = unscaled * vae.config.scaling_factor
    clip_in = _clip_input(data.rgb, image_encoder.config.image_size)
    views = cfg.world.views_per_object

    def loss(step: int) -> Tensor:
        target = torch.randint(0, scaled.shape[0], (cfg.batch,), generator=g)
        # the reference: another view of the same object
        ref = data.object_index[target] * views + torch.randint(0, views, (cfg.batch,), generator=g)
        camera = torch.stack([
            relative_camera(data.elevation[t:t + 1], data.azimuth[t:t + 1], torch.full((1,), world.VIEW_DISTANCE),
                            ReferenceView(float(data.elevation[r]), float(data.azimuth[r]), world.VIEW_DISTANCE))[0]
            for t, r in zip(target.tolist(), ref.tolist())])
        embedding = image_encoder(clip_in[ref]).image_embeds[:, None, :]
        context = projection(torch.cat([embedding, camera[:, None, :]], dim=-1))
        keep = (torch.rand(cfg.batch, generator=g) >= cfg.caption_dropout).float()
        context = context * keep[:, None, None]
        concat = unscaled[ref] * keep[:, None, None, None]
        x_t, noise, t = _noisy(scheduler, scaled[target], g)
        pred = unet(torch.cat([x_t, concat], 1), t, encoder_hidden_states=context).sample
        return F.mse_loss(pred, noise)

    params = list(unet.parameters()) + list(image_encoder.parameters()) + list(projection.parameters())
    _fit("zero123", params, cfg.zero123_steps, cfg.lr, loss)
    return unet, image_encoder, projection


def train_normals(cfg: MicroTrainConfig, data: WorldData, vae: AutoencoderKL, rgb_latents: Tensor, empty_text: Tensor,
                  g: torch.Generator) -> UNet2DConditionModel:
    unet = _unet(cfg, 8, cfg.normals_channels)
    scheduler = DDIMScheduler(**MARIGOLD_SCHEDULER)
    image_latents = rgb_latents * vae.config.scaling_factor
    normal_latents = _latents(vae, data.normal_image) * vae.config.scaling_factor
    last = scheduler.config.num_train_timesteps - 1

    def loss(step: int) -> Tensor:
        idx = torch.randint(0, image_latents.shape[0], (cfg.batch,), generator=g)
        # Half the batch at the last timestep, where the one-step estimate starts; half anywhere.
        t = torch.randint(0, last + 1, (cfg.batch,), generator=g)
        t[: cfg.batch // 2] = last
        x0 = normal_latents[idx]
        x_t, noise, t = _noisy(scheduler, x0, g, t)
        v = scheduler.get_velocity(x0, noise, t)
        pred = unet(torch.cat([image_latents[idx], x_t], 1), t, encoder_hidden_states=empty_text.expand(cfg.batch, -1, -1)).sample
        return F.mse_loss(pred, v)

    _fit("normals", list(unet.parameters()), cfg.normals_steps, cfg.lr, loss)
    return unet


# -- saving --------------------------------------------------------------------------------------------------


def _half(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False).to(torch.float16)


def save_text_to_image(folder: Path, vae: AutoencoderKL, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel,
                       text_encoder: CLIPTextModel) -> None:
    StableDiffusionPipeline(
        vae=_half(vae), text_encoder=_half(text_encoder), tokenizer=tokenizer, unet=_half(unet),
        scheduler=DDIMScheduler(**SD21_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)


def save_zero123(folder: Path, vae: AutoencoderKL, unet: UNet2DConditionModel,
                 image_encoder: CLIPVisionModelWithProjection, projection: CLIPCameraProjection) -> None:
    save_zero123_folder(folder, _half(unet), _half(vae), _half(image_encoder), _half(projection))


def save_normals(folder: Path, vae: AutoencoderKL, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                 unet: UNet2DConditionModel, size: int) -> None:
    MarigoldNormalsPipeline(
        unet=_half(unet), vae=_half(vae), scheduler=DDIMScheduler(**MARIGOLD_SCHEDULER), text_encoder=_half(text_encoder),
        tokenizer=tokenizer, prediction_type="normals", use_full_z_range=True, default_denoising_steps=1,
        default_processing_resolution=size,
    ).save_pretrained(folder)


def train_all(out: Path, cfg: MicroTrainConfig) -> Path:
    """Render the world, train the VAE and the three priors, and save them under `out` (text_to_image/,
    zero123/, normals/, micro_priors.json). Each prior is saved into `<out>.building` as soon as it is
    trained; `out` is replaced only when all three are there."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    start = time.monotonic()
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    data = render_data(cfg.world)
    logger.info("rendered %d views of %d objects (%.0f s)", len(data.captions), len(data.colours), time.monotonic() - start)
    tokenizer = write_word_tokenizer(staging / "tokenizer", world.vocabulary_words(), cfg.max_tokens)
    vae, rgb_latents = train_vae(cfg, data, g)
    unet, text_encoder = train_text_to_image(cfg, data, vae, rgb_latents, tokenizer, g)
    # The models are trained in float32 and saved in float16; a float32 copy keeps training the others.
    save_text_to_image(staging / "text_to_image", copy.deepcopy(vae), tokenizer, unet, copy.deepcopy(text_encoder))
    save_zero123(staging / "zero123", copy.deepcopy(vae), *train_zero123(cfg, data, vae, rgb_latents, g))
    text_encoder.eval().requires_grad_(False)
    with torch.no_grad():
        empty = text_encoder(tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids)[0]
    normals_unet = train_normals(cfg, data, vae, rgb_latents, empty, g)
    save_normals(staging / "normals", vae, tokenizer, text_encoder, normals_unet, cfg.world.size)
    shutil.rmtree(staging / "tokenizer")
    (staging / "micro_priors.json").write_text(json.dumps(
        {"seed": cfg.seed, "held_out": [list(p) for p in cfg.world.held_out], "views_per_object": cfg.world.views_per_object,
         "steps": {k: getattr(cfg, k) for k in ("vae_steps", "text_steps", "zero123_steps", "normals_steps")},
         "seconds": round(time.monotonic() - start)}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    logger.info("micro priors saved in %s (%.0f s in all)", out, time.monotonic() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the micro priors on renders of the procedural world.")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (0.05 for a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = MicroTrainConfig(seed=args.seed)
    if args.scale != 1.0:
        cfg = cfg.scaled(args.scale)
    train_all(args.out, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
