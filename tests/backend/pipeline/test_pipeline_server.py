"""The DreamPolish pipeline behind the real backend server (loopback ZeroMQ, tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import RequestRejected
from dreampolish.protocol.codec import encode
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import production_client
from tests.support.recording import box_payload

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models"), pytest.mark.timeout(600)]


def test_bad_requests_get_clear_errors_and_the_backend_keeps_serving(tmp_path):
    with production_client(tmp_path) as client:
        assert {"tiny", "draft", "standard", "high"} <= set(client.welcome.presets)
        nan_mesh = box_payload()
        nan_mesh.vertices[3, 1] = np.nan
        for spec, message in [
            (JobSpec("  "), "prompt is empty"),
            (JobSpec("a vase", preset="ultra"), "unknown preset"),
            (JobSpec("a vase", stages=["reference", "carve"]), "stage .carve. in stages is not part of"),
            (JobSpec("a vase", options={"polish.stepz": 2}), "no field 'stepz'"),
            (JobSpec("a vase", mode="texture", input_mesh=nan_mesh), "NaN"),
        ]:
            with pytest.raises(RequestRejected, match=message):
                client.submit(spec)
        source = box_payload(with_uvs=True)
        job = client.submit(JobSpec("a wooden crate", preset="tiny", mode="texture", input_mesh=source))
        events = list(client.events(job, timeout_s=500))
        assert isinstance(events[-1], m.Done), events[-1]
        results = [e for e in events if isinstance(e, m.StageResult)]
        assert [r.stage for r in results] == ["texture", "export"]
        # The final mesh travels once: export's result is an empty marker, so the job's stage results
        # weigh what the textured mesh weighs (before, export sent that mesh a second time).
        sizes = {r.stage: sum(len(f) for f in encode(r)) for r in results}
        assert sizes["texture"] > 10_000, sizes
        assert sizes["export"] < 2_000, sizes
        assert results[1].mesh.num_vertices == 0 and not results[1].mesh.textures
        final = results[0].mesh
        np.testing.assert_array_equal(final.uvs, source.uvs)
        np.testing.assert_array_equal(final.faces, source.faces)
        assert final.texture("base_color").png.startswith(b"\x89PNG")
