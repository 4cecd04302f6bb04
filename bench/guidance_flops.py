"""Where an SDS step's compute goes: FLOPs of the full-size SD 2.1-base parts on PyTorch's `meta`
device (real shapes, no data, nothing downloaded; backend/models/full_size.py), counted by
torch.utils.flop_counter (matmuls and convolutions, forward and backward).

    .venv/bin/python bench/guidance_flops.py [--batch 1]

One text-SDS step = encode the render (VAE encoder forward), the UNet on the noisy latents twice
(classifier-free guidance: conditional and unconditional in one batch of 2B), and the backward of
the loss through the VAE encoder to the render (the UNet is not backpropagated: SDS's gradient skips
it). The figures are per step for `--batch` views, at the encode sizes the method allows: 512 (SD's
native size, what the presets use), 384 and 256 (the UNet then runs at 48² / 32² latents, below the
size SD 2.1-base was trained at). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode


def _flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure(batch: int, encode: int) -> dict[str, float]:
    from dreampolish.backend.models.full_size import FullSizePriors
    from dreampolish.backend.models.specs import model_set

    models = FullSizePriors(model_set("default"), "meta", torch.bfloat16).text_to_image
    vae, unet = models.vae, models.unet
    image = torch.zeros(batch, 3, encode, encode, device="meta", dtype=torch.bfloat16, requires_grad=True)
    latent_side = encode // 8
    noisy = torch.zeros(2 * batch, 4, latent_side, latent_side, device="meta", dtype=torch.bfloat16)
    context = torch.zeros(2 * batch, 77, 1024, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(2 * batch, device="meta", dtype=torch.long)

    encode_fwd = _flops(lambda: vae.encode(image).latent_dist.mean)

    def encode_fwd_bwd() -> None:
        vae.encode(image).latent_dist.mean.sum().backward()

    with torch.no_grad():
        unet_fwd = _flops(lambda: unet(noisy, t, encoder_hidden_states=context))
    encode_total = _flops(encode_fwd_bwd)
    total = encode_total + unet_fwd
    return {"encode": encode, "vae_forward_tflop": encode_fwd / 1e12, "vae_backward_tflop": (encode_total - encode_fwd) / 1e12,
            "unet_cfg_forward_tflop": unet_fwd / 1e12, "step_tflop": total / 1e12, "vae_share": encode_total / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for encode in (512, 384, 256):
        row = measure(args.batch, encode)
        rows.append(row)
        print(f"encode {encode}: VAE fwd {row['vae_forward_tflop']:.2f} + bwd {row['vae_backward_tflop']:.2f} TFLOP, "
              f"UNet (CFG pair) {row['unet_cfg_forward_tflop']:.2f} TFLOP, step {row['step_tflop']:.2f} TFLOP, "
              f"VAE share {row['vae_share']:.0%}", flush=True)
    print(json.dumps({"batch": args.batch, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
