"""One remesher run in a process of its own (backend/geometry/remesh.py starts it by path, with a time limit,
so that a remesher that crashes or hangs on a generated mesh costs the job a fallback, never the job).

    python remesh_worker.py IN.npz OUT.npz

IN holds `vertices` float32 (V,3), `faces` int32 (F,3), `method` ("instant_meshes" or "quadriflow"),
`target_faces`, `quads` (1: quad-dominant, 0: triangles) and `seed`; OUT gets `vertices` float32 and
`sizes` int32 (P,) and `corners` int32 (L,): the polygons as the remesher made them.
Imports numpy and the remesher only: nothing of the backend.
"""

from __future__ import annotations

import sys

import numpy as np


def read_obj(path: str) -> tuple[np.ndarray, list[list[int]]]:
    """Positions and polygons (0-based vertex indices) of an OBJ file's `v` and `f` lines."""
    vertices, polygons = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                vertices.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                polygons.append([int(c.split("/")[0]) - 1 for c in line.split()[1:]])
    return np.asarray(vertices, np.float32).reshape(-1, 3), polygons


def instant_meshes(vertices: np.ndarray, faces: np.ndarray, target: int, quads: bool, seed: int):
    import tempfile

    import pyinstantmeshes

    # pyinstantmeshes.remesh reads Instant Meshes' output back as triangles: remesh_file keeps its quads, so
    # the mesh goes through OBJ files. rosy/posy 4: quad-dominant (Instant Meshes' defaults); 6/3 triangles.
    # Deterministic mode, so that a rerun after a restart makes the same mesh.
    with tempfile.TemporaryDirectory(prefix="remesh-") as tmp:
        source, target_path = f"{tmp}/in.obj", f"{tmp}/out.obj"
        with open(source, "w") as f:
            f.writelines(f"v {x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in vertices.tolist())
            f.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces.tolist())
        pyinstantmeshes.remesh_file(source, target_path, target_face_count=int(target), rosy=4 if quads else 6,
                                    posy=4 if quads else 3, deterministic=True)
        return read_obj(target_path)


def quadriflow(vertices: np.ndarray, faces: np.ndarray, target: int, quads: bool, seed: int):
    from pyQuadriFlow.pyQuadriFlow import pyquadriflow

    out = pyquadriflow(int(target), int(seed), vertices.tolist(), faces.tolist(), False, False, False, False, False)
    return np.asarray(out["vertices"], np.float32), [list(q) for q in out["faces"]]


METHODS = {"instant_meshes": instant_meshes, "quadriflow": quadriflow}


def main(argv: list[str]) -> int:
    source, target_path = argv[1], argv[2]
    job = np.load(source)
    run = METHODS[str(job["method"])]
    v, polygons = run(np.ascontiguousarray(job["vertices"], np.float32),
                      np.ascontiguousarray(job["faces"], np.int32), int(job["target_faces"]), bool(job["quads"]),
                      int(job["seed"]))
    np.savez(target_path, vertices=np.asarray(v, np.float32), sizes=np.array([len(p) for p in polygons], np.int32),
             corners=np.array([c for p in polygons for c in p], np.int32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
