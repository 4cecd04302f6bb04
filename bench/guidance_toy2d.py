"""Toy 2D check of the score distillation objectives (SDS, CSD, VSD, BSD, DSD).

1. Train a small pixel-space UNet2DConditionModel (the class the real prior
   uses) on a synthetic image distribution: 8x8 images of a red disk or a
   blue square at a random place and size on a grey background, conditioned on
   a learned class token, with 10% condition dropout (so CFG works).
2. For each objective, optimise a batch of images (sigmoid of free logits)
   towards the "red disk" class with the project's ScoreDistillation code,
   at the same CFG scale. A stand-in "VAE" that is the identity puts the
   objectives in pixel space; everything else is the production code path.
3. Print how each behaves and one JSON line with the figures:
     class_acc      share of images that show a red blob of plausible size
     saturated      share of channel values pinned at 0 or 1 (CFG over-saturation)
     diversity      mean pairwise RMS distance between the batch's images
     jitter         RMS change of the images per step over the last quarter (stability)
     denoise_err    frozen model's noise-prediction error on the result, averaged over t
                    (lower = closer to what the model learned as "red disk")
     loss_drop      mean guidance loss, first quarter / last quarter

Run:  .venv/bin/python bench/guidance_toy2d.py [--train-steps 800] [--opt-steps 300] (about 5 minutes on one core)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from types import SimpleNamespace

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.lora import LoraConfig
from dreampolish.backend.guidance.score_distillation import (
    OBJECTIVES,
    BootstrapConfig,
    ScoreDistillation,
    ScoreDistillationConfig,
    TimestepSchedule,
    add_noise,
)
from dreampolish.backend.guidance.text_prior import VIEW_DIRECTIONS, PromptEmbeddings, ViewPromptConfig
from dreampolish.backend.models.loading import TextToImageModels
from dreampolish.backend.render.cameras import CameraBatch
from dreampolish.backend.schedules import Ramp

logger = logging.getLogger("guidance_toy2d")

SIDE = 8
"""Image side: small enough that the prior trains in a few minutes on two shared CPU cores."""
BACKGROUND = 0.5
CLASS_NULL, CLASS_RED_DISK, CLASS_BLUE_SQUARE = 0, 1, 2


def sample_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """([n,3,S,S] images in [-1,1], [n] class ids): red disks and blue squares on grey."""
    yy, xx = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    labels = torch.randint(1, 3, (n,), generator=generator)
    centre = SIDE / 4 + SIDE / 2 * torch.rand(n, 2, generator=generator)
    size = SIDE / 8 + SIDE / 8 * torch.rand(n, generator=generator)
    images = torch.full((n, 3, SIDE, SIDE), BACKGROUND)
    for i in range(n):
        cy, cx = centre[i]
        if labels[i] == CLASS_RED_DISK:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < size[i] ** 2
            colour = torch.tensor([0.9, 0.15, 0.1])
        else:
            inside = ((yy - cy).abs() < size[i]) & ((xx - cx).abs() < size[i])
            colour = torch.tensor([0.1, 0.2, 0.9])
        images[i][:, inside] = colour[:, None]
    images += 0.02 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1) * 2 - 1, labels


class PixelSpace(torch.nn.Module):
    """The identity in place of the VAE: encode_render's "latents" are the pixels in [-1,1]."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=1.0, block_out_channels=[3])
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, image: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=image))


def train_prior(steps: int, seed: int) -> tuple[UNet2DConditionModel, torch.nn.Embedding, DDIMScheduler]:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SIDE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    tokens = torch.nn.Embedding(3, 32)  # null, red disk, blue square
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")
    opt = torch.optim.AdamW(list(unet.parameters()) + list(tokens.parameters()), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    batch = 32
    for step in range(steps):
        x0, labels = sample_images(batch, g)
        labels = torch.where(torch.rand(batch, generator=g) < 0.1, torch.zeros_like(labels), labels)
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        pred = unet(add_noise(scheduler, x0, noise, t), t, encoder_hidden_states=tokens(labels)[:, None]).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("prior step %d/%d  loss %.4f  (%.0fs)", step, steps, float(loss.detach()),
                        time.perf_counter() - start)
    unet.requires_grad_(False).eval()
    tokens.requires_grad_(False)
    return unet, tokens, scheduler


def identity_cameras(n: int) -> CameraBatch:
    eye = torch.eye(4).expand(n, 4, 4).clone()
    zeros = torch.zeros(n)
    return CameraBatch(eye, eye.clone(), SIDE, SIDE, zeros, zeros, zeros + 1, zeros + 40)


def looks_like_red_disk(rgb: torch.Tensor) -> torch.Tensor:
    """[N,S,S,3] -> [N] bool: a reddish blob covering 2%..60% of the image."""
    red = (rgb[..., 0] > 0.6) & (rgb[..., 2] < 0.45) & (rgb[..., 1] < 0.5)
    coverage = red.float().mean(dim=(1, 2))
    return (coverage > 0.02) & (coverage < 0.6)


@torch.no_grad()
def denoise_error(unet, scheduler, token: torch.Tensor, rgb: torch.Tensor, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x0 = rgb.permute(0, 3, 1, 2) * 2 - 1
    errs = []
    for t_frac in (0.1, 0.3, 0.5, 0.7):
        t = torch.full((x0.shape[0],), int(t_frac * 1000))
        noise = torch.randn(x0.shape, generator=g)
        pred = unet(add_noise(scheduler, x0, noise, t), t, encoder_hidden_states=token.expand(x0.shape[0], -1, -1)).sample
        errs.append(float(((pred - noise) ** 2).mean()))
    return sum(errs) / len(errs)


def run_objective(objective: str, models: TextToImageModels, prompts: PromptEmbeddings, args) -> dict[str, float]:
    s = args.cfg
    config = ScoreDistillationConfig(
        objective=objective,
        guidance_scale=s,
        timesteps=TimestepSchedule(t_range=(0.02, 0.98), t_range_end=(0.02, 0.6), anneal_until=0.5),
        vae_resolution=SIDE,
        # DSD leans on the variational term and lowers the CFG weight over time; CSD uses the same CFG weight as SDS.
        lambda_cfg=Ramp(s - 1, (s - 1) / 3) if objective == "dsd" else Ramp(s - 1),
        lambda_var=Ramp(1.0),
        lora=LoraConfig(rank=4, learning_rate=1e-3, camera_conditioning=False, train_steps=1),
        bootstrap=BootstrapConfig(interval=25, train_steps=4,
                                  lora=LoraConfig(rank=4, learning_rate=1e-3, camera_conditioning=False)),
        seed=args.seed,
    )
    guidance = ScoreDistillation(models, prompts, config)
    g = torch.Generator().manual_seed(args.seed + 7)
    logits = (0.3 * torch.randn(args.batch, SIDE, SIDE, 3, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=args.lr)
    cameras = identity_cameras(args.batch)
    losses, grad_norms, jitter = [], [], []
    previous = torch.sigmoid(logits).detach()
    start = time.perf_counter()
    for step in range(args.opt_steps):
        rgb = torch.sigmoid(logits)
        out = guidance(GuidanceInput(rgb=rgb, opacity=torch.ones_like(rgb[..., :1]), cameras=cameras,
                                     step=step, total_steps=args.opt_steps))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        current = torch.sigmoid(logits).detach()
        jitter.append(float(((current - previous) ** 2).mean().sqrt()))
        previous = current
        losses.append(float(out.loss.detach()))
        grad_norms.append(float(out.diagnostics["grad_norm"]))
    seconds = time.perf_counter() - start
    final = torch.sigmoid(logits).detach()
    q = max(args.opt_steps // 4, 1)
    flat = final.reshape(args.batch, -1)
    pairwise = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    token = prompts.conditional[:1]
    return {
        "class_acc": float(looks_like_red_disk(final).float().mean()),
        "saturated": float(((final < 0.02) | (final > 0.98)).float().mean()),
        "diversity": float(pairwise.sum() / (args.batch * (args.batch - 1))),
        "jitter": sum(jitter[-q:]) / q,
        "denoise_err": denoise_error(models.unet, models.scheduler, token, final, args.seed),
        "loss_drop": (sum(losses[:q]) / q) / max(sum(losses[-q:]) / q, 1e-12),
        "grad_norm_last": sum(grad_norms[-q:]) / q,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=800, help="prior training steps")
    parser.add_argument("--opt-steps", type=int, default=300, help="image optimisation steps per objective")
    parser.add_argument("--batch", type=int, default=8, help="images optimised together")
    parser.add_argument("--cfg", type=float, default=7.5, help="CFG scale s, the same for every objective")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the image logits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 avoids spin-wait stalls on a busy shared CPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    unet, tokens, scheduler = train_prior(args.train_steps, args.seed)
    prompts = PromptEmbeddings(
        conditional=tokens(torch.tensor([CLASS_RED_DISK] * len(VIEW_DIRECTIONS)))[:, None],
        unconditional=tokens(torch.tensor([CLASS_NULL]))[:, None],
        config=ViewPromptConfig(view_dependent=False),
    )
    g = torch.Generator().manual_seed(args.seed + 99)
    data, labels = sample_images(args.batch, g)
    data_rgb = ((data + 1) / 2).permute(0, 2, 3, 1)
    reference = {"denoise_err_on_data": denoise_error(unet, scheduler, prompts.conditional[:1],
                                                      data_rgb[labels == CLASS_RED_DISK], args.seed)}
    results: dict[str, dict[str, float]] = {}
    for objective in args.objectives.split(","):
        # A fresh copy of the UNet per objective: the LoRA adapters live on it.
        fresh = UNet2DConditionModel.from_config(unet.config)
        fresh.load_state_dict(unet.state_dict())
        fresh.requires_grad_(False).eval()
        models = TextToImageModels(unet=fresh, vae=PixelSpace(), text_encoder=None, tokenizer=None,
                                   scheduler=scheduler, device=torch.device("cpu"), dtype=torch.float32, spec=None)
        results[objective] = run_objective(objective, models, prompts, args)
        r = results[objective]
        print(f"{objective:>4}: class_acc {r['class_acc']:.2f}  saturated {r['saturated']:.3f}  "
              f"diversity {r['diversity']:.3f}  jitter {r['jitter']:.4f}  denoise_err {r['denoise_err']:.3f}  "
              f"loss_drop x{r['loss_drop']:.2f}  ({r['seconds']:.0f}s)")
    print(f"reference: the frozen model's denoise_err on real red disks = {reference['denoise_err_on_data']:.3f}")
    print(json.dumps({"bench": "guidance_toy2d", "cfg": args.cfg, "train_steps": args.train_steps,
                      "opt_steps": args.opt_steps, **reference, "objectives": results}))


if __name__ == "__main__":
    main()
