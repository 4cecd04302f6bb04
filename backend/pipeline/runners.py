"""One runner per stage: how the stage runs inside a job, and how it comes back from its checkpoint.

A runner is small: `run` takes the stage's StageContext, calls the stage function (backend/stages/),
leaves what the next stage needs in the carry and returns its checkpoint (plain tensors and values);
`restore` puts a checkpoint back into the carry, as if the stage had just run; `result` is the mesh
the client receives for the stage (None: the stage ends with no mesh). `STAGE_RUNNERS` lists them
once, in order, and each says which job modes run it. docs/adding-a-stage.md shows how to add one.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from dreampolish.protocol.errors import EMPTY_GEOMETRY, NO_GEOMETRY, NO_TEXTURE
from dreampolish.protocol.job import JOB_MODES, reference_pictures
from dreampolish.protocol.scene import MeshPayload

from .. import bake, refine_mask
from ..geometry.mesh import TriMesh, simplify_mesh
from ..guidance.base import ReferenceView
from ..pipeline_api import JobFailed
from ..presets import PipelinePreset
from ..stages.dmtet import DmtetState, run_dmtet
from ..stages.export import mesh_payload, polygon_payload, run_export, texture_payloads
from ..stages.finish import run_finish
from ..stages.nerf import NerfState, run_nerf
from ..stages.neus import NeusState, run_neus
from ..stages.polish import run_polish
from ..stages.texture import inherits_colours, run_texture
from ..stages.texture_bake import BakedTexture, bake_detail_normals, bake_texture
from ..udim_bake import bake_tiles
from .checkpoint_format import mesh_from_ckpt, mesh_to_ckpt, payload_from_ckpt, payload_to_ckpt
from .context import JobSetup, StageCarry, StageContext
from .frame import reference_as_seen
from .previews import render_preview, render_state
from .priors import CombinedGuidance

logger = logging.getLogger(__name__)

Checkpoint = dict[str, Any]
"""What a stage saves: plain tensors and values (CheckpointStore loads them with weights_only=True)."""


class StageRunner(ABC):
    """One stage of the pipeline (module docstring)."""

    name: ClassVar[str]
    """The stage's name on the wire and in checkpoints (a lower-case identifier: protocol.job.check_stage_name)."""
    modes: ClassVar[tuple[str, ...]] = JOB_MODES
    """The job modes whose chain includes this stage."""
    automatic: ClassVar[bool] = False
    """The stage runs by itself whenever the stage before it in the chain ends a job's plan (export after
    texture): a request need not name it, and welcome.stage_chains leaves it out."""
    remeshes: ClassVar[bool] = False
    """The stage makes a new mesh of its own (DMTet): a masked refine, which keeps the input's topology,
    skips it (backend/refine_mask.py)."""

    def skipped(self, preset: PipelinePreset) -> bool:
        """The request's preset turns the stage off: its jobs leave it out of their plan (the chains announced
        in welcome keep it)."""
        return False

    @abstractmethod
    def run(self, c: StageContext) -> Checkpoint:
        """Run the stage, leave its output in c.carry, return its checkpoint."""

    @abstractmethod
    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        """Put a finished stage's checkpoint back into the carry, as `run` left it."""

    def result(self, job: JobSetup, carry: StageCarry) -> MeshPayload | None:
        """The mesh the client receives when the stage ends (by default the carry's mesh)."""
        return None if carry.mesh is None else mesh_payload(carry.mesh, job.frame.transform)


class ReferenceRunner(StageRunner):
    name = "reference"
    modes = ("generate",)

    def run(self, c: StageContext) -> Checkpoint:
        c.reporter.check_cancel()
        view = c.priors.reference(c.spec, c.preset, c.frame, c.seed)
        c.carry.reference = view
        rgba = torch.cat([view.rgb, view.mask], -1).float().clamp(0, 1)
        if c.frame.scene_camera is not None:  # the preview shows it where the scene camera will see it
            rgba = reference_as_seen(rgba, c.frame.reference_camera, c.frame.scene_camera).clamp(0, 1)
        c.reporter.progress(1, 1, {}, bake.encode_png(rgba.cpu().numpy()))
        # a multi-view request's further pictures follow the first (their cameras are the frame's)
        return {**self._view_ckpt(view), "more": [self._view_ckpt(v) for v in view.more]}

    @staticmethod
    def _view_ckpt(view: ReferenceView) -> Checkpoint:
        return {"rgb": view.rgb.detach().cpu(), "mask": view.mask.detach().cpu(),
                "depth": None if view.depth is None else view.depth.detach().cpu(),
                "normal": None if view.normal is None else view.normal.detach().cpu()}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        cameras = job.frame.view_cameras or [job.frame.reference_camera]
        views = [ReferenceView(rgb=v["rgb"], mask=v["mask"], camera=cam, depth=v.get("depth"), normal=v.get("normal"))
                 for v, cam in zip([ckpt, *ckpt.get("more", [])], cameras)]
        carry.reference = dataclasses.replace(views[0], more=views[1:])

    def result(self, job: JobSetup, carry: StageCarry) -> MeshPayload | None:
        return None  # an image, sent as the stage's preview


class GeometryRunner(StageRunner):
    """NeRF, NeuS and DMTet: guidance from the priors, previews of the state, the extracted mesh."""

    def run(self, c: StageContext) -> Checkpoint:
        guidance = c.priors.geometry_guidance(self.name, c.spec, c.preset, c.frame, c.carry.reference, c.seed)
        c.reporter.preview = lambda state, step: render_state(state, c.reporter.camera(step))
        try:
            state = self.optimise(c, guidance)
        finally:
            guidance.release()
        mesh = state.extract_mesh(normalize=False)  # stay in the job's object frame
        if mesh.num_faces == 0:
            raise JobFailed(EMPTY_GEOMETRY, f"the {self.name} stage ended with no surface; try another seed or "
                                              "more steps")
        c.carry.geometry, c.carry.mesh = state, mesh
        return {"state": state.state_dict(), "mesh": mesh_to_ckpt(mesh)}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = mesh_from_ckpt(ckpt["mesh"], job.device)
        carry.geometry = self.state_from_dict(job.preset, ckpt["state"], job.device)

    @abstractmethod
    def optimise(self, c: StageContext, guidance: CombinedGuidance) -> Any:
        """The stage function on the carry's input: its final state."""

    @abstractmethod
    def state_from_dict(self, preset: PipelinePreset, state: Checkpoint, device: torch.device) -> Any: ...


class NerfRunner(GeometryRunner):
    name = "nerf"
    modes = ("generate",)

    def optimise(self, c: StageContext, guidance: CombinedGuidance) -> NerfState:
        state = run_nerf(c.preset.nerf, guidance, c.carry.reference, c.reporter, generator=c.generator,
                         device=c.device, picture=bool(reference_pictures(c.spec)))
        self._aligned_reference(state, c.carry)
        return state

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        super().restore(ckpt, job, carry)
        self._aligned_reference(carry.geometry, carry)

    @staticmethod
    def _aligned_reference(state: NerfState, carry: StageCarry) -> None:
        """The stages after NeRF see the picture where NeRF learnt it to be (stages/alignment.py)."""
        if state.alignment is not None and carry.reference is not None:
            t, s = state.alignment.shift_scale()
            logger.info("the picture's object sits %.3f, %.3f off its silhouette's centre, at %.3f times its size",
                     float(t[0]), float(t[1]), float(s))
            carry.reference = state.alignment.apply_to_view(carry.reference)

    def state_from_dict(self, preset: PipelinePreset, state: Checkpoint, device: torch.device) -> NerfState:
        return NerfState.from_state_dict(preset.nerf, state, device)


class NeusRunner(GeometryRunner):
    name = "neus"
    modes = ("generate",)

    def optimise(self, c: StageContext, guidance: CombinedGuidance) -> NeusState:
        # After a resume with an edited mesh (carry.geometry cleared), NeuS starts from that mesh.
        init = c.carry.geometry if isinstance(c.carry.geometry, NerfState) else c.carry.mesh
        return run_neus(c.preset.neus, init, guidance, c.carry.reference, c.reporter, generator=c.generator,
                        device=c.device)

    def state_from_dict(self, preset: PipelinePreset, state: Checkpoint, device: torch.device) -> NeusState:
        return NeusState.from_state_dict(preset.neus, state, device)


class DmtetRunner(GeometryRunner):
    name = "dmtet"
    modes = ("generate", "geometry")
    remeshes = True

    def optimise(self, c: StageContext, guidance: CombinedGuidance) -> DmtetState:
        init: Any = c.carry.geometry
        if not isinstance(init, NeusState):
            init = c.carry.mesh if c.carry.mesh is not None else c.frame.input_mesh
        return run_dmtet(c.preset.dmtet, init, guidance, c.carry.reference, c.reporter, generator=c.generator,
                         device=c.device)

    def state_from_dict(self, preset: PipelinePreset, state: Checkpoint, device: torch.device) -> DmtetState:
        return DmtetState.from_state_dict(preset.dmtet, state, device)


class PolishRunner(StageRunner):
    name = "polish"
    modes = ("generate", "geometry")

    def run(self, c: StageContext) -> Checkpoint:
        mesh = c.carry.mesh if c.carry.mesh is not None else c.frame.input_mesh
        if mesh is None:
            raise JobFailed(NO_GEOMETRY, "the polish stage has no mesh to polish")
        targets = c.priors.normal_targets(c.preset, c.seed) if c.preset.polish.loss == "normal_estimator" else None
        c.reporter.preview = lambda state, step: render_preview(state.mesh, c.reporter.camera(step),
                                                                c.job.rasterizer)
        polished = run_polish(c.preset.polish, mesh, targets, c.carry.reference, c.reporter,
                              generator=c.generator, device=c.device, rasterizer=c.job.rasterizer,
                              move_weights=refine_mask.vertex_weights(c.spec, c.frame.transform, c.device))
        c.carry.mesh = c.carry.detail = polished
        c.carry.geometry = None
        return {"mesh": mesh_to_ckpt(polished)}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = carry.detail = mesh_from_ckpt(ckpt["mesh"], job.device)
        carry.geometry = None


class FinishRunner(StageRunner):
    """Game-ready output (stages/finish.py): the polished mesh remeshed to the budget with its UVs; the
    polished mesh stays the detail that texture bakes into the normal map."""

    name = "finish"
    modes = ("generate", "geometry")
    remeshes = True  # a masked refine keeps the input's topology: no game-ready remesh

    def skipped(self, preset: PipelinePreset) -> bool:
        return preset.finish.faces == 0

    def run(self, c: StageContext) -> Checkpoint:
        mesh = c.carry.mesh if c.carry.mesh is not None else c.frame.input_mesh
        if mesh is None:
            raise JobFailed(NO_GEOMETRY, "the finish stage has no mesh to finish")
        texture = c.preset.texture
        result = run_finish(c.preset.finish, mesh, c.reporter, atlas_size=texture.atlas_size,
                            padding=texture.chart_padding, seed=c.seed, device=c.device)
        c.carry.detail = c.carry.detail if c.carry.detail is not None else mesh
        c.carry.mesh, c.carry.face_sizes = result.low.mesh, result.low.sizes
        c.carry.lods = [(lod.mesh, lod.sizes) for lod in result.lods]
        return {"mesh": mesh_to_ckpt(result.low.mesh), "face_sizes": torch.from_numpy(result.low.sizes),
                "lods": [{"mesh": mesh_to_ckpt(lod.mesh), "face_sizes": torch.from_numpy(lod.sizes)}
                         for lod in result.lods],
                "detail": mesh_to_ckpt(c.carry.detail), "chamfer": result.chamfer}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = mesh_from_ckpt(ckpt["mesh"], job.device)
        carry.face_sizes = ckpt["face_sizes"].numpy()
        carry.detail = mesh_from_ckpt(ckpt["detail"], job.device)
        carry.lods = [(mesh_from_ckpt(d["mesh"], job.device), d["face_sizes"].numpy()) for d in ckpt["lods"]]

    def result(self, job: JobSetup, carry: StageCarry) -> MeshPayload | None:
        payload = polygon_payload(mesh_payload(carry.mesh, job.frame.transform), carry.face_sizes)
        payload.lods = [polygon_payload(mesh_payload(mesh, job.frame.transform), sizes) for mesh, sizes in carry.lods]
        return payload


class TextureRunner(StageRunner):
    """Texture: optimise a colour field on the fixed mesh, bake it into an atlas. Texture-only jobs keep
    the input's topology, UVs and transform exactly."""

    name = "texture"

    def run(self, c: StageContext) -> Checkpoint:
        # a masked refine keeps the input's topology too (its carry mesh, after polish, has the input's)
        keep_topology = (c.spec.mode == "texture" and c.carry.mesh is None) or c.spec.mask is not None
        mesh = self._mesh(c, keep_topology)
        preset = c.preset
        if c.carry.reference is None and preset.texture.unanchored:  # a refine: nothing holds the colours
            # (TextureConfig.unanchored_guidance)
            preset = dataclasses.replace(preset, texture=dataclasses.replace(
                preset.texture, guidance=preset.texture.unanchored_guidance))
        if inherits_colours(preset.texture, mesh):  # DreamCraft3D's lower timesteps on inherited colours
            texture = preset.texture
            preset = dataclasses.replace(preset, texture=dataclasses.replace(
                texture, guidance=dataclasses.replace(texture.guidance, timesteps=texture.inherited_timesteps)))
        guidance = c.priors.texture_guidance(refine_mask.region_spec(c.spec), preset, c.frame, c.seed,
                                             c.carry.reference)
        c.reporter.preview = lambda state, step: render_preview(
            mesh, c.reporter.camera(step), c.job.rasterizer, state.color_field.color)
        normals = self._low_mesh_normals(c, mesh)
        try:
            state = run_texture(c.preset.texture, mesh, guidance, c.carry.reference, c.reporter,
                                generator=c.generator, device=c.device, rasterizer=c.job.rasterizer,
                                normal_map=normals)
        finally:
            guidance.release()
        if c.spec.udim_tiles:  # one map per UDIM tile, on the input's own UVs
            textures = bake_tiles(mesh.vertices.detach().cpu().numpy(), c.spec.input_mesh.faces.astype(np.int64),
                                  c.spec.input_mesh.uvs, list(c.spec.udim_tiles), state.colors_at,
                                  c.preset.texture.atlas_size, c.preset.texture.dilation)
            c.carry.payload = self._input_payload(c, mesh, None, textures)
            return {"mesh": mesh_to_ckpt(mesh), "payload": payload_to_ckpt(c.carry.payload),
                    "field": state.state_dict()}
        if refine_mask.repaints(c.spec):  # the input's own map, repainted inside the mask only
            c.carry.payload = refine_mask.repainted_payload(c.spec, c.frame.transform, mesh, state.colors_at)
            return {"mesh": mesh_to_ckpt(c.carry.mesh if c.carry.mesh is not None else mesh),
                    "payload": payload_to_ckpt(c.carry.payload), "field": state.state_dict()}
        own_uvs = None if mesh.uvs is None else mesh.uvs.detach().cpu().numpy()
        only_colour = c.preset.base_color_only
        decomposer = None if only_colour or not c.preset.texture.pbr.decomposes else c.priors.intrinsics(c.preset, c.seed)
        try:
            # a finished (game-ready) mesh always gets the polished detail as its normal map
            baked = bake_texture(c.preset.texture, state, uvs=own_uvs, detail=c.carry.detail, decomposer=decomposer,
                                 rasterizer=c.job.rasterizer, base_color_only=only_colour,
                                 normal_map=True if c.carry.face_sizes is not None else None, normals=normals)
        finally:
            if decomposer is not None:
                decomposer.close()
        c.carry.baked = baked
        textures = texture_payloads(baked.base_color, baked.normal_map, c.preset.export.normal_map_dtype,
                                    baked.roughness_metallic)
        lods = self._lod_payloads(c, mesh, baked)
        if keep_topology:
            c.carry.payload = self._input_payload(c, mesh, baked, textures)
        else:
            textured = TriMesh(mesh.vertices, mesh.faces, torch.as_tensor(baked.uvs, device=mesh.device),
                               mesh.vertex_colors)
            c.carry.mesh = textured
            c.carry.payload = polygon_payload(mesh_payload(textured, c.frame.transform, textures), c.carry.face_sizes)
            c.carry.payload.lods = lods
        return {"mesh": mesh_to_ckpt(c.carry.mesh if c.carry.mesh is not None else mesh),
                "payload": payload_to_ckpt(c.carry.payload), "field": state.state_dict()}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = mesh_from_ckpt(ckpt["mesh"], job.device)
        carry.payload = payload_from_ckpt(ckpt["payload"])
        carry.face_sizes = None if carry.payload.face_sizes is None else carry.payload.face_sizes.astype(np.int64)
        carry.baked = None

    def result(self, job: JobSetup, carry: StageCarry) -> MeshPayload | None:
        return carry.payload

    @staticmethod
    def _low_mesh_normals(c: StageContext, mesh: TriMesh) -> np.ndarray | None:
        """A finished low mesh's normal map, baked from the polished surface before texturing (it depends on
        the geometry alone), for the guidance to see the detail (run_texture) and for the result; None for
        any other mesh, or a low mesh without UVs (an edit sent on resume without them: baked after)."""
        if c.carry.face_sizes is None or c.carry.detail is None or mesh.uvs is None:
            return None
        cfg = c.preset.texture
        return bake_detail_normals(cfg, mesh, mesh.uvs.detach().cpu().numpy(), c.carry.detail,
                                   cfg.normal_ray_distance)

    @staticmethod
    def _lod_payloads(c: StageContext, mesh: TriMesh, baked: BakedTexture) -> list[MeshPayload]:
        """The finish stage's levels of detail, each on its own UVs with the finished mesh's own maps carried
        over (bake.transfer_maps: its base colour and metallic-roughness, read where the level's surface meets
        the finished mesh's), so every level shows the colours the texture stage gave the mesh, and the
        polished detail baked into its own normal map; each level's atlas half the side of the one before."""
        maps = [m for m in (baked.base_color, baked.roughness_metallic) if m is not None]
        vertices = mesh.vertices.detach().cpu().numpy().astype(np.float32)
        faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
        out = []
        for i, (lod, sizes) in enumerate(c.carry.lods, start=1):
            cfg = dataclasses.replace(c.preset.texture, atlas_size=max(64, c.preset.texture.atlas_size >> i))
            uvs = lod.uvs.detach().cpu().numpy()
            lod_vertices = lod.vertices.detach().cpu().numpy().astype(np.float32)
            carried = bake.transfer_maps(lod_vertices, lod.faces.detach().cpu().numpy().astype(np.int64), uvs,
                                         vertices, faces, baked.uvs, maps, cfg.atlas_size,
                                         cfg.dilation,
                                         cfg.normal_ray_distance)
            normal = bake_detail_normals(cfg, lod, uvs, c.carry.detail, cfg.normal_ray_distance)
            textures = texture_payloads(carried[0], normal, c.preset.export.normal_map_dtype,
                                        carried[1] if len(carried) > 1 else None)
            out.append(polygon_payload(mesh_payload(lod, c.frame.transform, textures), sizes))
        return out

    @staticmethod
    def _mesh(c: StageContext, keep_topology: bool) -> TriMesh:
        cfg = c.preset.texture
        mesh = c.frame.input_mesh if keep_topology and c.carry.mesh is None else c.carry.mesh
        if mesh is None:
            raise JobFailed(NO_GEOMETRY, "the texture stage has no mesh to texture")
        finished = c.carry.face_sizes is not None  # the finish stage's low mesh is the final topology
        if cfg.simplify_to_faces and not keep_topology and not finished and mesh.num_faces > cfg.simplify_to_faces:
            detail_faces = mesh.num_faces
            mesh = simplify_mesh(mesh, cfg.simplify_to_faces)
            logger.info("texture: mesh simplified from %d to %d faces", detail_faces, mesh.num_faces)
        return mesh

    @staticmethod
    def _input_payload(c: StageContext, mesh: TriMesh, baked: BakedTexture | None, textures: list) -> MeshPayload:
        """Texture only: the input's vertices, faces, UVs and transform go back exactly as they came."""
        source = c.spec.input_mesh
        if source is None:  # the request check refuses this; a stage must not crash on it either
            raise JobFailed(NO_GEOMETRY, "a texture-only job needs input_mesh")
        uvs = source.uvs
        if uvs is None:
            # New xatlas UVs, in the input's own corner order (TriMesh.from_payload reverses the corners of
            # a mirrored object).
            same_order = np.array_equal(mesh.faces.cpu().numpy().astype(np.uint32), source.faces)
            uvs = baked.uvs if same_order else np.ascontiguousarray(baked.uvs[:, ::-1])
        vertices, normals = source.vertices, source.normals
        if c.spec.mask is not None:  # only the weighted vertices moved (backend/refine_mask.py)
            vertices, normals = refine_mask.masked_vertices(c.spec, c.frame.transform, mesh)
        return MeshPayload(vertices=vertices, faces=source.faces, uvs=uvs, normals=normals,
                           colors=source.colors, transform=source.transform, textures=textures).validate()


class ExportRunner(StageRunner):
    name = "export"
    automatic = True  # a textured result is always exported

    def run(self, c: StageContext) -> Checkpoint:
        c.reporter.check_cancel()
        if c.carry.payload is None:
            raise JobFailed(NO_TEXTURE, "export needs the texture stage's result")
        result = run_export(c.preset.export, c.carry.payload, c.job.work_dir)
        c.carry.files.update(result.files)
        c.reporter.progress(1, 1, {})
        return {"payload": payload_to_ckpt(c.carry.payload),
                "files": {k: str(v) for k, v in result.files.items()}}

    def restore(self, ckpt: Checkpoint, job: JobSetup, carry: StageCarry) -> None:
        carry.payload = payload_from_ckpt(ckpt["payload"])

    def result(self, job: JobSetup, carry: StageCarry) -> MeshPayload | None:
        # The final mesh is the texture stage's result, already sent: sending it again doubled the
        # bytes and the client's import. An empty mesh marks the export done (protocol/README.md).
        return MeshPayload(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))


STAGE_RUNNERS: tuple[StageRunner, ...] = (
    ReferenceRunner(), NerfRunner(), NeusRunner(), DmtetRunner(), PolishRunner(), FinishRunner(), TextureRunner(),
    ExportRunner(),
)
"""The DreamPolish stages, in order: the one definition of each mode's stage chain (StageRunner.modes),
which the backend announces in welcome.stage_chains and the add-on's Run Up To lists. A job runs the
chain of its mode, or the unbroken run of it that its request names."""
