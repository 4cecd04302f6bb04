"""The finishing stage (issue 30): a polished surface remeshed to a face budget in quads by the real
remesher (its own process, a time limit), UVs made for the quads, the fallback taken and said when the
remesher cannot deliver, and bad budgets refused at submit with the range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.bake import rasterize_uv
from dreampolish.backend.geometry.marching import marching_tetrahedra
from dreampolish.backend.geometry.mesh import TriMesh, clean_mesh
from dreampolish.backend.geometry.remesh import pair_triangles
from dreampolish.backend.geometry.tets import make_tet_grid
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.stages.export import polygon_payload
from dreampolish.backend.stages.finish import FinishConfig, dmtet_face_bound, run_finish
from dreampolish.protocol.client import RequestRejected
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.messages import REMESH_FALLBACK
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import production_client


class Recorder:
    """A StageReporter that keeps every progress report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int, dict]] = []

    def progress(self, step, total, losses) -> None:
        self.reports.append((step, total, {k: float(v) for k, v in losses.items()}))

    def check_cancel(self) -> None:
        return None

    def watch(self, state) -> None:
        return None


def bumpy_torus(ripples: int = 12, sections: tuple[int, int] = (96, 48)) -> TriMesh:
    """A torus in the object frame (radius 0.5) with `ripples` ripples around its ring (6 % of the tube's
    radius): detail that a low mesh cannot keep."""
    tm = trimesh.creation.torus(major_radius=0.32, minor_radius=0.14, major_sections=sections[0],
                                minor_sections=sections[1])
    v = np.asarray(tm.vertices, np.float64)
    angle = np.arctan2(v[:, 1], v[:, 0])
    ring = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], 1) * 0.32
    out = v - ring
    v = ring + out * (1 + 0.06 * np.sin(ripples * angle))[:, None]
    return TriMesh(torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(np.asarray(tm.faces), dtype=torch.int64))


def uv_overlap(uvs: np.ndarray, size: int = 1024) -> float:
    """The share of the charts' UV area that lies under another chart: 1 - covered texels / summed triangle
    areas in texels (0 for an atlas without overlaps, up to rasterisation at the charts' edges)."""
    a, b, c = uvs[:, 0].astype(np.float64), uvs[:, 1].astype(np.float64), uvs[:, 2].astype(np.float64)
    area = np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])).sum() / 2
    covered = rasterize_uv(uvs, size, size, border=0).inside.sum() / (size * size)
    return float(1 - covered / area)


def test_a_torus_is_finished_at_its_budget_in_quads_with_uvs_made_for_them():
    high = bumpy_torus()
    reporter = Recorder()
    result = run_finish(FinishConfig(faces=1500), high, reporter, atlas_size=512, padding=2)
    low = result.low
    assert abs(low.num_faces - 1500) <= 150, result.notes
    assert low.quad_share >= 0.9, result.notes
    assert not result.fell_back and "instant_meshes try 1" in result.notes[0]
    assert result.chamfer < 0.005  # the ripples (6 % of the tube's radius) are for the normal map
    uvs = low.mesh.uvs.numpy()
    assert uvs.min() >= 0 and uvs.max() <= 1 and uv_overlap(uvs) < 0.01
    # the payload is polygons with one UV per face corner: the fans' shared corners agree (validated)
    payload = polygon_payload(low.mesh.to_payload(), low.sizes)
    assert payload.num_polygons == low.num_faces and int(np.sum(payload.face_sizes == 4)) >= 0.9 * low.num_faces
    assert reporter.reports[-1][2][REMESH_FALLBACK] == 0.0


def test_a_remesher_past_its_time_limit_falls_back_to_decimation_and_says_so():
    reporter = Recorder()
    result = run_finish(FinishConfig(faces=1500, time_limit_s=0.05), bumpy_torus(), reporter, atlas_size=256)
    assert result.fell_back
    assert any("fell back to quadric decimation: instant_meshes ran past its time limit" in n
               or "fell back to quadric decimation: instant_meshes ran out of time" in n for n in result.notes), result.notes
    assert abs(result.low.num_faces - 1500) <= 150 and result.low.quad_share > 0.5  # paired into quads
    assert reporter.reports[-1][2][REMESH_FALLBACK] == 1.0


@pytest.mark.slow  # two tori of 9,216 faces each through the remesher: 15 s on the shared 2-core CPU
def test_a_non_manifold_mesh_is_finished_not_failed():
    torus = bumpy_torus()
    v, f = torus.vertices.numpy(), torus.faces.numpy()
    # a second torus through the first, and a fin on one edge (an edge of three faces)
    v2 = v[:, [2, 1, 0]] + np.array([0.2, 0, 0], np.float32)
    fin = np.array([[f[0, 0], f[0, 1], 2 * len(v)]])
    verts = np.concatenate([v, v2, v[f[0, 0]][None] + 0.05]).astype(np.float32)
    faces = np.concatenate([f, f[:, ::-1] + len(v), fin])
    mesh = TriMesh(torch.as_tensor(verts), torch.as_tensor(faces))
    result = run_finish(FinishConfig(faces=2000), mesh, Recorder(), atlas_size=256)
    assert abs(result.low.num_faces - 2000) <= 200, result.notes
    assert result.chamfer < 0.01


def test_triangles_on_request():
    result = run_finish(FinishConfig(faces=1200, quads=False), bumpy_torus(), Recorder(), atlas_size=256)
    assert (result.low.sizes == 3).all() and abs(result.low.num_faces - 1200) <= 120, result.notes


def test_lods_halve_the_faces_each_with_their_own_uvs():
    result = run_finish(FinishConfig(faces=2000, lods=2), bumpy_torus(), Recorder(), atlas_size=256)
    assert [abs(lod.num_faces - n) <= 0.1 * n for lod, n in zip(result.lods, (1000, 500))] == [True, True]
    for lod in result.lods:
        assert lod.mesh.uvs is not None and uv_overlap(lod.mesh.uvs.numpy(), 512) < 0.01


def test_a_grid_of_triangle_pairs_becomes_quads():
    x, y = np.meshgrid(np.arange(5.0), np.arange(5.0))
    v = np.stack([x.ravel(), y.ravel(), np.zeros(25)], 1).astype(np.float32)
    i = (np.arange(4)[:, None] * 5 + np.arange(4)[None]).ravel()
    faces = np.concatenate([np.stack([i, i + 1, i + 6], 1), np.stack([i, i + 6, i + 5], 1)])
    poly = pair_triangles(v, faces)
    assert poly.num_faces == 16 and poly.quad_share == 1.0
    p = v[poly.triangles()]
    assert (np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])[:, 2] > 0).all()  # the winding kept


@pytest.mark.parametrize(("faces", "words"), [(300, "finish.faces is 300: .*500 to 1000000 faces"),
                                              (2_000_000, r"finish.faces must be in \[0, 1000000\], got 2000000")])
def test_a_budget_out_of_range_is_refused_at_submit_with_the_range(faces, words):
    spec = JobSpec("a red cone", preset="micro", options={"finish.faces": faces})
    with pytest.raises(ValidationError, match=words):
        DreamPolishPipeline().check(spec)


def fine_box(subdivisions: int = 4) -> MeshPayload:
    """A box of 12 * 4^subdivisions triangles (3,072 at 4), placed away from the origin as Refine Selected sends it."""
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    for _ in range(subdivisions):
        box = box.subdivide()
    transform = np.eye(4, dtype=np.float32)
    transform[:3, 3] = (2.0, 0.0, 1.0)
    return MeshPayload(vertices=np.asarray(box.vertices, np.float32), faces=np.asarray(box.faces, np.uint32),
                       transform=transform)


def plates(count: int = 12) -> MeshPayload:
    """`count` parallel unit squares 0.05 apart (open sheets): a surface of many times its bounding sphere's area
    (5.3 in the object frame at 12, against the sphere's pi)."""
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    vertices = np.concatenate([square + np.array([0, 0, 0.05 * i], np.float32) for i in range(count)])
    faces = np.concatenate([np.array([[0, 1, 2], [0, 2, 3]]) + 4 * i for i in range(count)]).astype(np.uint32)
    return MeshPayload(vertices=vertices, faces=faces)


REFUSED_OVER_THE_SURFACE = [
    # a generate job: the most the micro preset's 32-cell grid makes of an object of the frame's sphere
    (JobSpec("a red cone", preset="micro", options={"finish.faces": 30_000}),
     r"finish.faces is 30000: this job's game-ready mesh can have 500 to 29873 faces \(the most the 32-cell "
     r"DMTet grid makes of an object of the job's size"),
    # a refine through DMTet: its mesh's surface (the box: less than its sphere, so the sphere's bound)
    (JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(2), options={"finish.faces": 7_500}),
     r"500 to 7469 faces \(the most the 16-cell DMTet grid makes of your mesh's surface"),
    # a refine from polish: the request's own mesh is what finish remeshes, 3,072 triangles
    (JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(4), stages=["polish", "finish", "texture"],
             options={"finish.faces": 3_100}),
     r"finish.faces is 3100: this job's game-ready mesh can have 500 to 3072 faces \(your mesh's own triangle count"),
    (JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(1), stages=["finish", "texture"],
             options={"finish.faces": 500}),
     r"at most 48 faces \(your mesh's own triangle count.*fewer than the 500 a game-ready mesh needs"),
    # a masked refine keeps the input's topology: a budget with it would be ignored, so it is refused
    (JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(1),
             mask=RefineMask(np.ones(fine_box(1).num_vertices, np.float32)), options={"finish.faces": 5_000}),
     r"finish.faces is 5000, but a masked refine keeps your mesh's topology"),
]


@pytest.mark.parametrize(("spec", "words"), REFUSED_OVER_THE_SURFACE,
                         ids=["generate", "refine", "from polish", "too few", "masked"])
def test_a_budget_above_what_the_surface_can_have_is_refused_at_submit_with_the_range(spec, words):
    with pytest.raises(ValidationError, match=words):
        DreamPolishPipeline().check(spec)


def test_the_same_jobs_within_their_range_pass():
    pipeline = DreamPolishPipeline()
    pipeline.check(JobSpec("a red cone", preset="micro", options={"finish.faces": 29_873}))
    pipeline.check(JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(2), options={"finish.faces": 7_469}))
    pipeline.check(JobSpec("a box", preset="tiny", mode="geometry", input_mesh=fine_box(4),
                           stages=["polish", "finish", "texture"], options={"finish.faces": 3_072}))
    # a mesh of more surface than its bounding sphere has a bound as much larger (12 plates: 5.3 against pi)
    pipeline.check(JobSpec("plates", preset="tiny", mode="geometry", input_mesh=plates(), options={"finish.faces": 12_000}))


@pytest.mark.parametrize("preset", ["tiny", "micro"])
def test_the_bound_is_twice_what_the_grid_makes_of_the_object_frame_s_sphere(preset):
    # the sphere of radius 0.5 has the most surface of any convex object in the frame: marching tetrahedra on the
    # preset's own grid makes it, and the bound allows twice its faces (at 9.1 triangles per h², a little above)
    dmtet = DreamPolishPipeline().resolve_preset(JobSpec("a red cone", preset=preset)).dmtet
    grid = make_tet_grid(dmtet.grid_resolution, dmtet.grid_bound)
    vertices, faces = marching_tetrahedra(grid.vertices, grid.vertices.norm(dim=-1) - 0.5, grid.tets)
    sphere = clean_mesh(TriMesh(vertices, faces)).num_faces
    bound = dmtet_face_bound(dmtet, math.pi)
    assert 2 * sphere <= bound <= 2.2 * sphere, (sphere, bound)


@pytest.mark.timeout(120)
def test_the_real_server_refuses_such_budgets_at_submit_and_keeps_serving(tmp_path):
    with production_client(tmp_path) as client:
        for spec, words in REFUSED_OVER_THE_SURFACE:
            with pytest.raises(RequestRejected, match=words):
                client.submit(spec)
        assert client.list_jobs() == []  # nothing was queued


def test_the_stage_is_in_the_plan_only_with_a_budget():
    pipeline = DreamPolishPipeline()
    assert "finish" not in pipeline.stage_plan(JobSpec("a red cone", preset="micro"))
    on = JobSpec("a red cone", preset="micro", options={"finish.faces": 3000})
    assert pipeline.stage_plan(on)[-3:] == ["finish", "texture", "export"]
    # a request naming the stage with the budget off runs the rest of its run
    named = JobSpec("a red cone", preset="micro", stages=["reference", "nerf", "neus", "dmtet", "polish", "finish"])
    pipeline.check(named)
    assert pipeline.stage_plan(named)[-1] == "polish"


def test_a_polygon_payload_of_a_finished_mesh_round_trips_its_faces():
    result = run_finish(FinishConfig(faces=800), bumpy_torus(), Recorder(), atlas_size=256)
    payload = polygon_payload(result.low.mesh.to_payload(), result.low.sizes)
    again = MeshPayload.from_polygons(payload.vertices, payload.face_sizes, payload.face_corners,
                                      payload.corner_uvs())
    np.testing.assert_array_equal(again.faces, payload.faces)
    np.testing.assert_array_equal(again.uvs, payload.uvs)


class Cancelled(Exception):
    pass


class CancelsInTheRemesher(Recorder):
    """Cancels at the second check: the first is the stage's own, the second comes while the remesher runs."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def check_cancel(self) -> None:
        self.checks += 1
        if self.checks == 2:
            raise Cancelled


def test_a_job_cancelled_while_the_remesher_runs_stops_it():
    reporter = CancelsInTheRemesher()
    with pytest.raises(Cancelled):
        run_finish(FinishConfig(faces=1500), bumpy_torus(), reporter, atlas_size=256)
    assert reporter.checks == 2 and reporter.reports == []  # stopped inside the first remesher run
