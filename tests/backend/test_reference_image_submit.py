"""A bad reference image is refused at submit with its reason; the backend keeps serving and loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec

from tests.support.images import BAD_IMAGES, rgba
from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


def test_bad_images_are_refused_and_queued_jobs_are_kept(tmp_path):
    with running_backend(tmp_path / "store") as server:
        with BackendClient(server.endpoint, timeout_s=30) as c:
            c.connect()
            kept = c.submit(JobSpec("a chair", preset="tiny", pause_after=["reference"],
                                    options={"test.step_s": 0.2}))
            for name in ("not a png", "empty", "one pixel", "too wide", "truncated", "bomb"):
                image, message = BAD_IMAGES[name]
                with pytest.raises(RequestRejected) as info:
                    c.submit(JobSpec("", preset="tiny", image=image))
                assert info.value.code == "invalid_message", name
                assert message.split("\\")[0] in info.value.message, (name, info.value.message)
            assert c.ping() >= 0
            good = c.submit(JobSpec("", preset="tiny", image=ReferenceImage(array=rgba()), pause_after=["reference"]))
            assert {j.job_id for j in c.list_jobs()} == {kept, good}
            assert server.manager.get(kept).spec.image is None
            # The picture waits on disk, not in memory: the run reads it back.
            assert server.manager.get(good).spec.image is None
            stored = server.manager.store.full_spec(server.manager.get(good))
            np.testing.assert_array_equal(stored.image.array, rgba())
