"""Time per guidance step and peak GPU memory for SDS, VSD and DSD at full size, without downloading weights.

Builds the Stable Diffusion 2.1-base architectures (UNet, VAE, OpenCLIP-H text
encoder) from config dicts written below, with random weights (the same FLOPs
and memory as the real checkpoint), in the backend's dtype (bf16 where the GPU
supports it), and runs the production ScoreDistillation on a render batch that
requires grad, as the texture stage does: encode through the VAE, UNet passes
without gradient, LoRA step for VSD/DSD, backward into the render.

Prints one line per objective and one JSON line. Without CUDA it says so and exits 0.

Run:  .venv/bin/python bench/gpu_guidance.py [--render 1024] [--vae-res 512] [--batch 1] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from dreampolish.backend.models.full_size import SD21_TEXT_ENCODER, SD21_UNET, SD_VAE
from dreampolish.backend.models.tiny import SD21_SCHEDULER  # the same noise schedule the tiny models use


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", type=int, default=1024, help="render side in pixels (texture stage: 1024)")
    parser.add_argument("--vae-res", type=int, default=512, help="side the render is resized to for the VAE")
    parser.add_argument("--batch", type=int, default=1, help="views per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per objective (after 2 warm-up steps)")
    parser.add_argument("--objectives", default="sds,vsd,dsd")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("gpu_guidance: CUDA is not available; nothing to measure (run this on a GPU machine).")
        return 0

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from dreampolish.backend.guidance.base import GuidanceInput
    from dreampolish.backend.guidance.score_distillation import ScoreDistillation, ScoreDistillationConfig
    from dreampolish.backend.guidance.text_prior import VIEW_DIRECTIONS, PromptEmbeddings, ViewPromptConfig
    from dreampolish.backend.models.loading import TextToImageModels, choose_dtype
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device("cuda")
    dtype = choose_dtype(device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).requires_grad_(False).eval()
    vae = AutoencoderKL(**SD_VAE).to(device, dtype).requires_grad_(False).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER)).to(device, dtype).requires_grad_(False).eval()
    models = TextToImageModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=None,
                               scheduler=DDIMScheduler(**SD21_SCHEDULER), device=device, dtype=dtype, spec=None)
    with torch.no_grad():
        ids = torch.randint(0, 49408, (len(VIEW_DIRECTIONS) + 1, 77), device=device)
        hidden = text_encoder(ids)[0]
    prompts = PromptEmbeddings(hidden[:-1], hidden[-1:], ViewPromptConfig())
    n = args.batch
    el = torch.linspace(-10, 45, n)
    az = torch.linspace(0, 360, n + 1)[:-1]
    from dreampolish.backend.render.cameras import CameraBatch

    cameras = CameraBatch(torch.eye(4).expand(n, 4, 4).clone(), torch.eye(4).expand(n, 4, 4).clone(),
                          args.render, args.render, el, az, torch.full((n,), 3.8), torch.full((n,), 40.0)).to(device)
    base_memory = torch.cuda.memory_allocated()
    print(f"device {torch.cuda.get_device_name()} dtype {dtype}; weights {base_memory / 2**30:.2f} GiB; "
          f"render {n}x{args.render}^2 -> VAE {args.vae_res}^2")
    results: dict[str, dict[str, float]] = {}
    for objective in args.objectives.split(","):
        guidance = ScoreDistillation(models, prompts, ScoreDistillationConfig(objective=objective, vae_resolution=args.vae_res))
        render = torch.rand(n, args.render, args.render, 3, device=device, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(args.steps + 2):
            start = time.perf_counter()
            out = guidance(GuidanceInput(rgb=render, opacity=torch.ones_like(render[..., :1]), cameras=cameras,
                                         step=step, total_steps=args.steps + 2))
            out.loss.backward()
            render.grad = None
            torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated()
        results[objective] = {
            "ms_per_step": 1000 * sum(times) / len(times),
            "peak_gib": peak / 2**30,
            "peak_over_weights_gib": (peak - base_memory) / 2**30,
        }
        r = results[objective]
        print(f"{objective:>4}: {r['ms_per_step']:8.1f} ms/step   peak {r['peak_gib']:.2f} GiB "
              f"(+{r['peak_over_weights_gib']:.2f} over the frozen weights)")
        guidance.release()
        del guidance, render, out
        torch.cuda.empty_cache()
        base_memory = torch.cuda.memory_allocated()
    print(json.dumps({"bench": "gpu_guidance", "device": torch.cuda.get_device_name(), "dtype": str(dtype),
                      "render": args.render, "vae_res": args.vae_res, "batch": n, "objectives": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
