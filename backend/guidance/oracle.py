"""The oracle: a known target mesh standing in for the diffusion priors.

It rasterises the target at the cameras a stage rendered and compares:
- opacity: MSE between the rendered opacity and the target's antialiased coverage;
- normals (when the stage supplies world normals): MSE between the rendered normals and
  the target's normals times its coverage (volume renders give opacity-weighted normals,
  so both sides are "normal x coverage");
- colour (only when shading == "albedo"): MSE on the target's fully covered pixels between the
  rendered albedo and the target's albedo (vertex colours, or a UV texture; grey otherwise). Lit views (a
  finished low mesh's texture stage) pull on nothing.
With it the optimisation machinery can be tested and measured without pretrained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry.mesh import TriMesh
from ..render.cameras import CameraBatch
from ..render.rasterize import MeshRasterizer
from .base import GuidanceInput, GuidanceOutput, ReferenceView

_GREY = 0.7


@dataclass
class OracleWeights:
    opacity: float = 1.0
    """Weight of the coverage MSE."""
    normal: float = 1.0
    """Weight of the normal MSE (when normals are given)."""
    rgb: float = 1.0
    """Weight of the albedo MSE (albedo-shaded steps only)."""


@dataclass
class OracleRender:
    mask: Tensor
    """[B,H,W,1] antialiased coverage."""
    normal: Tensor
    """[B,H,W,3] world normals, zero on the background."""
    albedo: Tensor
    """[B,H,W,3] albedo, zero on the background."""
    depth: Tensor
    """[B,H,W,1] camera depth, zero on the background."""


class OracleTarget:
    """Renders a target mesh's coverage, normals, albedo and depth."""

    def __init__(self, target: TriMesh, rasterizer: MeshRasterizer | None = None, texture: Tensor | None = None):
        self.target = target.detach()
        self.rasterizer = rasterizer or MeshRasterizer()
        self.texture = texture
        """[H,W,3] albedo image addressed by the mesh's UVs (OpenGL: v up), or None."""

    @torch.no_grad()
    def render(self, cameras: CameraBatch) -> OracleRender:
        mesh = self.target.to(cameras.device)
        out = self.rasterizer.rasterize(mesh, cameras)
        fg = out.foreground.to(out.mask.dtype)
        if self.texture is not None and mesh.uvs is not None:
            corner_uv = mesh.uvs[out.tri_id.clamp_min(0)]  # [B,H,W,3,2]
            uv = (out.bary[..., None] * corner_uv).sum(-2)
            grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)
            tex = self.texture.to(cameras.device).permute(2, 0, 1)[None].expand(grid.shape[0], -1, -1, -1)
            albedo = F.grid_sample(tex, grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        elif mesh.vertex_colors is not None:
            albedo = self.rasterizer.interpolate(mesh.vertex_colors, out, mesh.faces)
        else:
            albedo = torch.full_like(out.world_pos, _GREY)
        return OracleRender(out.mask, out.normal * fg, albedo * fg, out.depth)


class OracleGuidance:
    """Guidance (guidance/base.py) from a target mesh; see the module docstring for the losses."""

    def __init__(self, target: TriMesh, rasterizer: MeshRasterizer | None = None,
                 weights: OracleWeights | None = None, texture: Tensor | None = None):
        self.oracle = OracleTarget(target, rasterizer, texture)
        self.weights = weights or OracleWeights()

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        tgt = self.oracle.render(inp.cameras)
        opacity_l = F.mse_loss(inp.opacity, tgt.mask)
        loss = self.weights.opacity * opacity_l
        diag: dict[str, Tensor | float] = {"oracle_opacity": opacity_l.detach()}
        if inp.normal is not None and self.weights.normal > 0:
            normal_l = F.mse_loss(inp.normal, tgt.normal * tgt.mask)
            loss = loss + self.weights.normal * normal_l
            diag["oracle_normal"] = normal_l.detach()
        if inp.shading == "albedo" and self.weights.rgb > 0:
            # fully covered pixels only: at silhouettes the render blends in the stage's background
            interior = (tgt.mask > 0.99).to(inp.rgb.dtype)
            rgb_l = F.mse_loss(inp.rgb * interior, tgt.albedo * interior)
            loss = loss + self.weights.rgb * rgb_l
            diag["oracle_rgb"] = rgb_l.detach()
        elif inp.shading == "lit":  # the target's colours under a light it does not know: no pull, the graph kept
            loss = loss + 0.0 * inp.rgb.sum()
        return GuidanceOutput(loss, diag)


class OracleNormals:
    """NormalTargets (guidance/base.py): the target's normals in the renderer's CAMERA frame."""

    def __init__(self, target: TriMesh, rasterizer: MeshRasterizer | None = None):
        self.oracle = OracleTarget(target, rasterizer)

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        tgt = self.oracle.render(cameras)
        w2c_rot = cameras.w2c[:, :3, :3].to(tgt.normal)  # [B,3,3]
        n_cam = torch.einsum("bij,bhwj->bhwi", w2c_rot, tgt.normal)
        fg = (tgt.normal.norm(dim=-1, keepdim=True) > 0).to(n_cam.dtype)
        return F.normalize(n_cam, dim=-1) * fg


@torch.no_grad()
def oracle_reference(target: TriMesh, camera: CameraBatch, rasterizer: MeshRasterizer | None = None,
                     texture: Tensor | None = None, background: float = 1.0) -> ReferenceView:
    """The target rendered at the reference camera (B=1) as a ReferenceView over a white background,
    with the target's depth as the relative depth."""
    tgt = OracleTarget(target, rasterizer, texture).render(camera)
    rgb = tgt.albedo + background * (1 - tgt.mask)
    return ReferenceView(rgb=rgb[0].clamp(0, 1), mask=tgt.mask[0], camera=camera, depth=tgt.depth[0])
