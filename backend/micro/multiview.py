"""Several pictures of one held-out object, each with the camera that took it (issue 31), through the real
pipeline with the micro priors, scored as the robustness grid scores a cell (robustness.score_cell): the shape
its mesh is nearest to, Chamfer and silhouette IoU (held-out views and views from above) against the world's
object turned to the first camera's front, and the seen colour's ΔE.

The pictures are the world's renders (quality.world_picture): exact cameras, transparent background.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import quality, robustness, world


@dataclass(frozen=True)
class ViewsCell:
    colour: str
    shape: str
    views: tuple[tuple[float, float], ...]
    """(elevation, azimuth) in degrees of each picture's camera, the first the reference (the front)."""
    seed: int = 0
    words: bool = False
    """Whether the request carries the prompt too."""

    @property
    def name(self) -> str:
        views = " + ".join(f"{el:g}°" + (f"/az {az:g}°" if az else "") for el, az in self.views)
        return f"{self.colour} {self.shape} from {views}" + (" (+ words)" if self.words else "")


TORUS_HOLE = ViewsCell("green", "torus", ((0.0, 0.0), (89.0, 0.0)))
"""A front and an overhead picture: the hole shows in the second."""
TORUS_THREE = ViewsCell("green", "torus", ((0.0, 0.0), (89.0, 0.0), (30.0, 120.0)))
"""TORUS_HOLE with a third picture from 30°, az 120°: the third must not lose what two carve."""
CONE_ELEVATED = ViewsCell("red", "cone", ((30.0, 0.0), (0.0, 0.0)))
"""The picture from 30° that alone is framed off the cone, with one from the side."""

TABLE = [
    ViewsCell("green", "torus", ((0.0, 0.0),)), TORUS_HOLE, TORUS_THREE,
    ViewsCell("red", "cone", ((30.0, 0.0),)), ViewsCell("red", "cone", ((0.0, 0.0),)), CONE_ELEVATED,
    ViewsCell("red", "cone", ((30.0, 0.0), (0.0, 0.0), (10.0, 120.0))),
    ViewsCell("blue", "mug", ((30.0, 0.0),)), ViewsCell("blue", "mug", ((30.0, 0.0), (0.0, 90.0))),
    ViewsCell("blue", "mug", ((30.0, 0.0), (0.0, 90.0), (60.0, 200.0))),
]
"""bench/multiview.py's table: 1, 2 and 3 pictures of three held-out objects."""


def pictures(cell: ViewsCell) -> list:
    """The cell's pictures with their cameras, as a request's views (PictureView)."""
    from dreampolish.protocol.job import PictureView

    return [PictureView(*quality.world_picture(cell.colour, cell.shape, el, az)) for el, az in cell.views]


def run_views_cell(cell: ViewsCell, options: dict | None = None, work_dir: Path | None = None
                   ) -> tuple[robustness.CellResult, quality.Generation]:
    """One cell through the real pipeline (the micro preset, `options` on top), scored; and its generation."""
    prompt = world.object_prompt(cell.colour, cell.shape) if cell.words else ""
    with tempfile.TemporaryDirectory(dir=work_dir) as work:
        t = time.monotonic()
        gen = quality.generate(prompt, Path(work), options, seed=cell.seed, views=pictures(cell))
        seconds = time.monotonic() - t
    as_grid = robustness.Cell(cell.colour, cell.shape, cell.seed, cell.views[0][0], picture=True, words=cell.words)
    return robustness.score_cell(as_grid, gen, seconds, cell.shape), gen
