"""Per-stage checkpoints of one job, in the job's own folder (ctx.work_dir).

Layout:
    WORK/checkpoints/manifest.json     {"finished": [stage, ...], "paused_after": stage | null}
    WORK/checkpoints/<stage>.pt        what the next stage needs from <stage> (torch.save of tensors
                                       and plain values; loaded with weights_only=True)

Every file is written to a temporary name and renamed into place, so a backend killed mid-write
leaves the previous checkpoint intact; the manifest is written last, so a stage counts as finished
only once its checkpoint is complete.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class CheckpointStore:
    """The checkpoints of one job."""

    def __init__(self, work_dir: Path):
        self.root = Path(work_dir) / "checkpoints"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def _read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"finished": [], "paused_after": None}
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.manifest_path)

    def finished(self) -> list[str]:
        """Stages whose checkpoints are complete, in the order they finished."""
        return list(self._read_manifest()["finished"])

    def clear(self) -> None:
        """Forget every checkpoint (a fresh run of the job)."""
        if self.root.exists():
            for path in self.root.iterdir():
                path.unlink()

    def save(self, stage: str, payload: dict[str, Any]) -> Path:
        """Store what `stage` hands to the next stage and mark it finished."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{stage}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        manifest = self._read_manifest()
        if stage not in manifest["finished"]:
            manifest["finished"].append(stage)
        self._write_manifest(manifest)
        logger.debug("checkpoint %s", path)
        return path

    def load(self, stage: str, device: torch.device | str = "cpu") -> dict[str, Any]:
        """What `stage` saved, with tensors on `device`."""
        return torch.load(self.root / f"{stage}.pt", map_location=device, weights_only=True)

    def mark_paused(self, stage: str | None) -> None:
        manifest = self._read_manifest()
        manifest["paused_after"] = stage
        self._write_manifest(manifest)

    def paused_after(self) -> str | None:
        return self._read_manifest().get("paused_after")
