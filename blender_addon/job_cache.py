"""Jobs on disk, under the extension's user directory: what was asked (job.json) and every stage
result received (arrays as .npz, textures as the PNG bytes sent or .npy arrays).

This is both the re-import cache and the job history, so both survive restarting Blender.
No bpy here beyond the folder's location, which the caller passes in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .protocol.scene import MeshPayload

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MESH_ARRAYS = ("vertices", "faces", "uvs", "normals", "colors", "transform", "face_sizes", "face_corners")


@dataclass
class JobRecord:
    """What the history list shows for one job."""

    job_id: str
    prompt: str = ""
    seed: int = 0
    preset: str = ""
    mode: str = "generate"
    status: str = "queued"
    target_object: str = ""
    """For refines: the name the refined object had at submit (shown to the artist; it is found by
    target_key, which a rename keeps)."""
    target_key: str = ""
    """For refines: the value of the refined object's TARGET_PROP custom property (refine_target.py),
    its identity through renames, undo and saving the .blend."""
    target_slot: int = -1
    """For texture-only refines: the material slot whose faces show the texture (-1: every face)."""
    origin_matrix: list[float] = field(default_factory=list)
    """For geometry refines: the refined object's world matrix at submit (16 floats, row by row). The
    result gets this transform and origin, its mesh brought into that frame; empty for other jobs."""
    stages: list[str] = field(default_factory=list)
    """Stage results received, in order."""
    plan: list[str] = field(default_factory=list)
    """The stages the job runs, in order (without export)."""
    last_seq: int = 0
    """Sequence number of the latest stage result stored: a re-attach replays the events after it."""
    placement: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """World position of the frame the job's cameras were sent in (a generated object's place)."""
    created_unix: float = field(default_factory=time.time)
    variant_group: str = ""
    """Shared by the seed variants submitted together (Generate Variants); "" for a single job."""


@dataclass
class CachedStage:
    """One stage result read back from disk."""

    stage: str
    mesh: MeshPayload
    """Geometry without textures; the textures are files, see texture_files."""
    texture_files: dict[str, Path]
    """Texture role -> .png (8-bit) or .npy (float array) file."""
    lods: list[CachedStage] = field(default_factory=list)
    """The mesh's levels of detail (LOD1...), each with its own texture files."""


class JobCache:
    def __init__(self, root: Path):
        self.root = root

    def job_dir(self, job_id: str) -> Path:
        # Job ids come from the backend: keep them from naming paths outside the cache.
        if not _SAFE_ID.match(job_id):
            raise ValueError(f"unusable job id {job_id!r}")
        path = self.root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- job records (the history) --------------------------------------------------------------

    def save_record(self, record: JobRecord) -> None:
        path = self.job_dir(record.job_id) / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
        tmp.replace(path)

    def load_record(self, job_id: str) -> JobRecord | None:
        path = self.job_dir(job_id) / "job.json"
        if not path.is_file():
            return None
        return _record_from_json(path)

    def update_record(self, job_id: str, **changes: object) -> JobRecord:
        record = self.load_record(job_id) or JobRecord(job_id=job_id)
        for key, value in changes.items():
            setattr(record, key, value)
        self.save_record(record)
        return record

    def history(self) -> list[JobRecord]:
        """Every job on disk, newest first."""
        records = []
        for path in self.root.glob("*/job.json"):
            record = _record_from_json(path)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.created_unix, reverse=True)

    # --- stage results --------------------------------------------------------------------------

    def record_stage(self, job_id: str, stage: str, **changes: object) -> JobRecord:
        """Add `stage` to the job's stages received (once) and apply `changes`, in one write."""
        record = self.load_record(job_id) or JobRecord(job_id=job_id)
        if stage not in record.stages:
            record.stages.append(stage)
        for key, value in changes.items():
            setattr(record, key, value)
        self.save_record(record)
        return record

    def save_stage(self, job_id: str, stage: str, mesh: MeshPayload, **changes: object) -> tuple[CachedStage, JobRecord]:
        """Store a stage result as it arrived and record it (with `changes` to the record, in the same
        write). Returns what load_stage would read back, without reading it, and the record."""
        folder = self.job_dir(job_id)
        cached = _save_mesh(folder, stage, stage, mesh)
        lod_folder = folder / f"{stage}_lods"
        if mesh.lods:
            lod_folder.mkdir(exist_ok=True)
        cached.lods = [_save_mesh(lod_folder, stage, f"LOD{i}", lod) for i, lod in enumerate(mesh.lods, start=1)]
        cached.mesh = dataclasses.replace(cached.mesh, lods=[c.mesh for c in cached.lods])
        record = self.record_stage(job_id, stage, **changes)
        return cached, record

    def load_stage(self, job_id: str, stage: str = "") -> CachedStage | None:
        """A stage's result, or the latest one when `stage` is empty; None if nothing is cached."""
        record = self.load_record(job_id)
        folder = self.job_dir(job_id)
        if not stage:
            # The latest stage stored with a mesh (export may be listed without one: it repeats texture).
            stored = [s for s in (record.stages if record else []) if (folder / f"{s}.npz").is_file()]
            if not stored:
                return None
            stage = stored[-1]
        cached = _load_mesh(folder, stage, stage)
        if cached is None:
            return None
        lod_folder = folder / f"{stage}_lods"
        for i in range(1, 4):
            lod = _load_mesh(lod_folder, stage, f"LOD{i}")
            if lod is None:
                break
            cached.lods.append(lod)
        cached.mesh = dataclasses.replace(cached.mesh, lods=[c.mesh for c in cached.lods])
        return cached


def _save_mesh(folder: Path, stage: str, name: str, mesh: MeshPayload) -> CachedStage:
    """`name`.npz (the arrays) and `name`_<role>.png/.npy (the textures) in `folder`."""
    arrays = {k: getattr(mesh, k) for k in MESH_ARRAYS if getattr(mesh, k) is not None}
    np.savez(folder / f"{name}.npz", **arrays)
    textures = {}
    for tex in mesh.textures:
        if tex.tile and tex.png is not None:  # a UDIM tile: one file each, found again by Blender's <UDIM>
            (folder / f"{name}_{tex.role}.{tex.tile}.png").write_bytes(bytes(tex.png))
            textures[tex.role] = folder / f"{name}_{tex.role}.{UDIM_TOKEN}.png"
            continue
        if tex.png is not None:
            path = folder / f"{name}_{tex.role}.png"
            path.write_bytes(bytes(tex.png))
        else:
            path = folder / f"{name}_{tex.role}.npy"
            np.save(path, np.asarray(tex.array))
        textures[tex.role] = path
    return CachedStage(stage=stage, mesh=dataclasses.replace(mesh, textures=[], lods=[]), texture_files=textures)


def _load_mesh(folder: Path, stage: str, name: str) -> CachedStage | None:
    path = folder / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    mesh = MeshPayload(**arrays).validate(require_faces=False)
    textures = {}
    for p in sorted(folder.glob(f"{name}_*.*")):
        if p.suffix in (".png", ".npy"):
            role, _, tile = p.stem[len(name) + 1:].partition(".")
            textures[role] = p if not tile else folder / f"{name}_{role}.{UDIM_TOKEN}.png"
    return CachedStage(stage=stage, mesh=mesh, texture_files=textures)


UDIM_TOKEN = "<UDIM>"
"""Where a tiled image's file names hold the tile number (Blender's convention: name.<UDIM>.png)."""


def _record_from_json(path: Path) -> JobRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in JobRecord.__dataclass_fields__}
        return JobRecord(**known)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable job record %s: %s", path, exc)
        return None
