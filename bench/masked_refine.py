"""A masked texture refine with the micro priors, over seeds (issue 32): the +X half of a red cube repainted
"a blue cube" (tests/backend/micro/test_micro_masked_refine.py's job).

    .venv/bin/python bench/masked_refine.py --threads 1 [--seeds 0 1 2 3 4] [--steps 240] [--option k=v ...]
        [--trace] [--keep DIR]

Per seed: the masked half's mean texel colour (sRGB), its ΔE*ab to the world's blue (the lit mean of the world's
renders of a blue cube over the quality test's held-out views, the bound MAX_DELTA_E applies to this) and to
the blue albedo, its ΔE to the world's red, whether the kept half came back byte for byte, and the seconds.
--trace also prints, every 20 steps, the mean colour of the covered pixels the guidance saw and its timestep.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dreampolish.backend.micro import quality, world
from dreampolish.backend.micro.quality import MAX_DELTA_E
from dreampolish.backend.render.colour import delta_e
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.protocol.job import JobSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.masked_mesh import masked_box, texels  # noqa: E402


def world_colour(colour: str) -> np.ndarray:
    cams = quality.HELD_OUT_CAMERAS.sample(8, 64, 64, torch.Generator().manual_seed(quality.HELD_OUT_SEED))
    return quality.world_colour(colour, "cube", cams, MeshRasterizer("torch"))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class _Trace:
    """Records what the texture guidance sees: the mean colour of its covered pixels, and its timestep."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, list[float], float]] = []
        self._orig = None

    def __enter__(self):
        from dreampolish.backend.pipeline.priors import CombinedGuidance

        self._orig = orig = CombinedGuidance.__call__
        rows = self.rows

        def traced(this, inp):
            out = orig(this, inp)
            inside = inp.opacity[..., 0] > 0.99
            colour = inp.rgb.detach()[inside].mean(0).tolist() if bool(inside.any()) else [float("nan")] * 3
            t = next((float(v) for k, v in out.diagnostics.items() if k.endswith("_t")), float("nan"))
            rows.append((inp.step, colour, t))
            return out

        CombinedGuidance.__call__ = traced
        return self

    def __exit__(self, *exc):
        from dreampolish.backend.pipeline.priors import CombinedGuidance

        CombinedGuidance.__call__ = self._orig


def run_seed(seed: int, options: dict, blue: np.ndarray, red: np.ndarray, trace: bool,
             keep: Path | None = None) -> dict:
    from dreampolish.backend.pipeline import DreamPolishPipeline

    red_bytes = tuple(int(round(c * 255)) for c in world.COLOURS["red"])
    box = masked_box(colour=red_bytes, feather=0.0, offset=(0.0, 0.0, 0.0), prompt="a blue cube", noise=False)
    spec = JobSpec(prompt="a red cube", preset="micro", mode="texture", input_mesh=box.payload, mask=box.mask,
                   seed=seed, options={k: v for k, v in options.items() if not k.startswith("(")})
    tracer = _Trace()
    with tempfile.TemporaryDirectory() as work:
        ctx = quality._Recorder(Path(work))
        start = time.monotonic()
        if trace:
            with tracer:
                DreamPolishPipeline().run(spec, ctx)
        else:
            DreamPolishPipeline().run(spec, ctx)
        seconds = time.monotonic() - start
    final = ctx.results["texture"]
    if keep is not None:  # the base-colour map and the stages' last previews, to look at
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"seed{seed}_base_color.png").write_bytes(bytes(final.texture("base_color").png))
        for stage, png in ctx.previews.items():
            (keep / f"seed{seed}_{stage}_preview.png").write_bytes(png)
    before, after = texels(box.payload), texels(final)
    kept = bool(np.array_equal(after[box.kept_texels], before[box.kept_texels]))
    painted = after[box.masked_texels][:, :3].astype(np.float32).mean(0) / 255.0
    albedo = np.asarray(world.COLOURS["blue"], np.float32)
    row = {"seed": seed, "painted": [round(float(c), 3) for c in painted],
           "de_blue": round(float(delta_e(painted, blue)), 1),
           "de_blue_albedo": round(float(delta_e(painted, albedo)), 1),
           "de_red": round(float(delta_e(painted, red)), 1), "kept_identical": kept, "seconds": round(seconds, 1)}
    if trace:
        for step, colour, t in tracer.rows:
            if step % 20 == 0 or step == tracer.rows[-1][0]:
                print(f"  seed {seed} step {step:4d} t {t:.2f} seen {np.round(colour, 3)} "
                      f"ΔE to blue {float(delta_e(np.asarray(colour), blue)):.1f}", flush=True)
        row["trace"] = [(s, [round(c, 4) for c in col], round(t, 3)) for s, col, t in tracer.rows]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=240, help="texture.steps")
    p.add_argument("--option", action="append", default=[], help="key=value (JSON value), e.g. texture.lr=0.02")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--texture-t", type=float, nargs=5, default=None, metavar=("LO", "HI", "LO_END", "HI_END", "UNTIL"),
                   help="the texture guidance's timestep schedule (options take no tuples: the micro preset is patched)")
    p.add_argument("--keep", type=Path, default=None, help="save each seed's map and previews here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"texture.steps": args.steps}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = _parse_value(value)
    if args.texture_t is not None:
        import dataclasses

        from dreampolish.backend import presets
        from dreampolish.backend.guidance.score_distillation import TimestepSchedule

        lo, hi, lo_end, hi_end, until = args.texture_t
        schedule = TimestepSchedule(t_range=(lo, hi), t_range_end=(lo_end, hi_end), anneal_until=until)
        base = presets.PRESETS["micro"]

        def patched():
            p = base()
            return dataclasses.replace(p, texture=dataclasses.replace(p.texture, guidance=dataclasses.replace(
                p.texture.guidance, timesteps=schedule)))

        presets.PRESETS["micro"] = patched
        options["(texture timesteps)"] = list(args.texture_t)
    blue, red = world_colour("blue"), world_colour("red")
    print(f"world's blue (lit mean) {np.round(blue, 3)}, albedo {world.COLOURS['blue']}; options {options}")
    rows = []
    for seed in args.seeds:
        row = run_seed(seed, options, blue, red, args.trace, args.keep)
        rows.append(row)
        ok = row["de_blue"] < MAX_DELTA_E < row["de_red"] and row["kept_identical"]
        print(f"seed {seed}: masked half {row['painted']} ΔE {row['de_blue']} to blue (bound {MAX_DELTA_E:.0f}), "
              f"{row['de_blue_albedo']} to its albedo, {row['de_red']} to red; kept half identical "
              f"{row['kept_identical']}; {row['seconds']} s {'PASS' if ok else 'MISS'}", flush=True)
    worst = max(r["de_blue"] for r in rows)
    print(f"worst ΔE to blue {worst}; {sum(r['de_blue'] < MAX_DELTA_E for r in rows)} of {len(rows)} within "
          f"{MAX_DELTA_E:.0f}")
    print(json.dumps({"benchmark": "masked_refine", "label": args.label, "options": options,
                      "rows": [{k: v for k, v in r.items() if k != "trace"} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
