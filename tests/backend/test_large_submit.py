"""A large submit is decoded, checked and stored off the loop that answers every client: another
client's pings are answered meanwhile, and the submit itself is served as before."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(180)


def big_mesh(vertices: int, faces: int) -> MeshPayload:
    """About 12 bytes a vertex and 12 a face: (2M, 4M) is the 72 MB of the largest allowed mesh."""
    return MeshPayload(
        vertices=np.random.default_rng(0).random((vertices, 3), dtype=np.float32),
        faces=(np.arange(faces * 3, dtype=np.uint32) % vertices).reshape(faces, 3),
    )


def test_pings_are_answered_while_a_large_submit_is_stored(tmp_path):
    mesh = big_mesh(2_000_000, 4_000_000)
    with running_backend(tmp_path / "store") as server:
        with BackendClient(server.endpoint, timeout_s=60) as artist, BackendClient(
            server.endpoint, timeout_s=10
        ) as other:
            artist.connect()
            other.connect()
            done = threading.Event()
            accepted: list[str] = []

            def submit() -> None:
                try:
                    accepted.append(artist.submit(JobSpec("huge", mode="geometry", input_mesh=mesh,
                                                          pause_after=["dmtet"])))
                finally:
                    done.set()

            t = threading.Thread(target=submit)
            t0 = time.monotonic()
            t.start()
            worst = 0.0
            pings = 0
            while not done.is_set():
                worst = max(worst, other.ping())
                pings += 1
            t.join()
            submit_s = time.monotonic() - t0
            print(f"submit of 72 MB took {submit_s:.2f} s; {pings} pings, the slowest {worst * 1000:.0f} ms")
            assert len(accepted) == 1 and server.manager.get(accepted[0]).spec_on_disk
            assert pings >= 3 and worst < 0.3, (pings, worst)
            artist.cancel(accepted[0])


def test_a_large_invalid_submit_is_refused_with_its_reason(tmp_path):
    mesh = big_mesh(200_000, 200_000)
    mesh.faces[0, 0] = 10_000_000  # an index past the vertices
    with running_backend(tmp_path / "store") as server:
        with BackendClient(server.endpoint, timeout_s=30) as c:
            c.connect()
            with pytest.raises(RequestRejected) as info:
                c.submit(JobSpec("bad", mode="geometry", input_mesh=mesh))
            assert info.value.code == "invalid_message"
            assert c.ping() >= 0
        assert server.manager.jobs == {}
