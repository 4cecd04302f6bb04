"""A target with known materials under a known light, for the PBR bake's oracle test and benchmark."""

from __future__ import annotations

import math

import torch
from dreampolish.backend.render.colour import linear_to_srgb, srgb_to_linear

# Three regions around the sphere's vertical axis (sectors of azimuth), each one material:
# albedo (display values), roughness, metallic.
REGIONS = torch.tensor([
    [0.90, 0.70, 0.30, 0.20, 1.00],  # polished gold
    [0.80, 0.15, 0.10, 0.90, 0.00],  # rough red plastic
    [0.20, 0.40, 0.80, 0.50, 0.00],  # satin blue paint
])
LIGHT = torch.nn.functional.normalize(torch.tensor([1.0, -0.6, 0.8]), dim=0)
AMBIENT = 0.25


def material_at(points: torch.Tensor) -> torch.Tensor:
    """points [N,3] -> [N,5] the target's material (REGIONS by azimuth sector)."""
    azimuth = torch.atan2(points[:, 1], points[:, 0]) % (2 * math.pi)
    region = (azimuth / (2 * math.pi / 3)).long().clamp(0, 2)
    return REGIONS.to(points)[region]


def lit_colour(points: torch.Tensor) -> torch.Tensor:
    """The target under one known light, as a view-independent colour (display values): what a 2D prior's
    image bakes in. In linear values, with a = albedo, m = metallic, r = roughness:
        (1 - m) a (A + (1 - A) n.l)  +  F0 (n.l)^(2 / r^2) (0.3 + 0.7 m)  +  A m a,
    F0 = 0.04 (1 - m) + a m (a Lambert term, a highlight about the light, ambient on metals), A = AMBIENT."""
    m = material_at(points)
    albedo = srgb_to_linear(m[:, :3])
    rough, metal = m[:, 3:4], m[:, 4:5]
    n = torch.nn.functional.normalize(points, dim=-1)
    ndl = (n @ LIGHT.to(points)).clamp_min(0)[:, None]
    diffuse = (1 - metal) * albedo * (AMBIENT + (1 - AMBIENT) * ndl)
    f0 = 0.04 * (1 - metal) + albedo * metal
    highlight = f0 * ndl ** (2.0 / rough**2) * (0.3 + 0.7 * metal)
    return linear_to_srgb((diffuse + highlight + AMBIENT * metal * albedo).clamp(0, 1))
