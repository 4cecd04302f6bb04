"""`dreampolish generate --image FILE [prompt]` against a real backend on loopback."""

from __future__ import annotations

import pytest
from dreampolish.protocol.cli import main

from tests.support.images import png_bytes, rgba
from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(60)


def test_generate_from_an_image_sends_it_and_needs_no_prompt(tmp_path, capsys):
    picture = tmp_path / "concept.png"
    picture.write_bytes(png_bytes(rgba()))
    with running_backend(tmp_path / "store") as server:
        out = tmp_path / "owl.glb"
        assert main(["generate", "--image", str(picture), "--backend", server.endpoint, "--out", str(out)]) == 0
        assert out.exists()
        assert main(["generate", "a bronze owl", "--image", str(picture), "--backend", server.endpoint,
                     "--out", str(tmp_path / "owl2.glb")]) == 0
        # What the backend stored (a job keeps its picture on disk only, not in memory).
        specs = [server.manager.store.full_spec(job) for job in server.manager.jobs.values()]
        assert sorted(s.prompt for s in specs) == ["", "a bronze owl"]
        assert all(s.image.png == picture.read_bytes() and s.mode == "generate" for s in specs)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xd8\xff\xe0JFIF", "not a PNG file; convert it to PNG"),
    (png_bytes(rgba(1, 1)), "at least 16"),
    (png_bytes(rgba())[:-30], "truncated"),
])
def test_a_bad_image_file_exits_with_its_reason_before_anything_is_sent(tmp_path, capsys, content, message):
    picture = tmp_path / "bad.png"
    picture.write_bytes(content)
    # An address nobody listens on: the image is refused before the client connects.
    code = main(["generate", "--image", str(picture), "--backend", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x.glb")])
    assert code == 2 and message in capsys.readouterr().err


def test_no_prompt_and_no_image_is_refused(tmp_path, capsys):
    with running_backend(tmp_path / "store") as server:
        code = main(["generate", "--backend", server.endpoint, "--out", str(tmp_path / "x.glb")])
        assert code == 2 and "prompt is empty" in capsys.readouterr().err
