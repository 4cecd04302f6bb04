"""Per-stage checkpoints of one job, in the job's own folder (ctx.work_dir).

Layout:
    WORK/checkpoints/manifest.json     {"finished": [stage, ...], "paused_after": stage | null}
    WORK/checkpoints/<stage>.pt        what the next stage needs from <stage> (torch.save of tensors
                                       and plain values; loaded with weights_only=True)

Every file is written to a temporary name, fsynced and renamed into place, so a backend killed
mid-write leaves the previous checkpoint intact; the manifest is written last, so a stage counts as
finished only once its checkpoint is complete. The manifest keeps each checkpoint's SHA-256: a
damaged or missing checkpoint costs that stage and the ones after it (they depend on it, so they
run again), and a damaged manifest costs every stage; neither stops the job.
"""

from __future__ import annotations

import hashlib
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
        empty: dict[str, Any] = {"finished": [], "paused_after": None, "sha256": {}}
        if not self.manifest_path.exists():
            return empty
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("%s is damaged (%s): every stage runs again", self.manifest_path, exc)
            return empty
        finished = manifest.get("finished") if isinstance(manifest, dict) else None
        if not isinstance(finished, list) or not all(isinstance(s, str) for s in finished):
            logger.warning("%s has no list of finished stages: every stage runs again", self.manifest_path)
            return empty
        paused = manifest.get("paused_after")
        sums = manifest.get("sha256")
        return {
            "finished": finished,
            "paused_after": paused if isinstance(paused, str) else None,
            "sha256": sums if isinstance(sums, dict) else {},
        }

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(manifest, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)

    def _intact(self, stage: str, sums: dict[str, Any]) -> bool:
        path = self.root / f"{stage}.pt"
        try:
            digest = _sha256(path)
        except OSError:
            return False
        # Manifests written before checksums were kept only need the file to exist.
        return sums.get(stage) in (None, digest)

    def finished(self) -> list[str]:
        """Stages whose checkpoints are complete, in the order they finished: the longest run of them
        whose files are intact (a later stage depends on the earlier ones)."""
        manifest = self._read_manifest()
        done: list[str] = []
        for stage in manifest["finished"]:
            if not self._intact(stage, manifest["sha256"]):
                logger.warning("checkpoint of %s is missing or damaged: it and later stages run again", stage)
                break
            done.append(stage)
        return done

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
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        manifest = self._read_manifest()
        if stage not in manifest["finished"]:
            manifest["finished"].append(stage)
        manifest["sha256"][stage] = _sha256(path)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
