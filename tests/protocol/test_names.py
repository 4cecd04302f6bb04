"""Names from the wire that name files: one checker, used for job ids and file-name options."""

from __future__ import annotations

import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.names import MAX_FILE_NAME_CHARS, check_file_name


@pytest.mark.parametrize("name", ["result.glb", "20261201-124200-a1b2c3", "crate v2.glb", "é.glb"])
def test_plain_names_pass(name):
    assert check_file_name(name, "export.glb_name") == name


@pytest.mark.parametrize("name, why", [
    ("../../other-job/state.json", "separators"),
    ("..", "'..'"),
    ("...", "'..'"),
    ("a..b", "'..'"),
    ("/etc/passwd", "separators"),
    ("sub/result.glb", "separators"),
    ("..\\state.json", "separators"),
    ("C:result.glb", "separators"),
    ("result\x00.glb", "NUL"),
    ("line\nbreak", "control"),
    ("", "empty"),
    ("x" * (MAX_FILE_NAME_CHARS + 1), "limit"),
    (" result.glb", "spaces"),
])
def test_unsafe_names_are_refused_with_the_field_named(name, why):
    with pytest.raises(ValidationError, match=rf"export\.glb_name must be a plain file name.*{why}"):
        check_file_name(name, "export.glb_name")


def test_a_suffix_is_required_when_asked_and_non_strings_are_refused():
    assert check_file_name("a.glb", "f", suffix=".glb") == "a.glb"
    for bad in ("state.json", ".glb"):
        with pytest.raises(ValidationError, match="must end with '.glb'"):
            check_file_name(bad, "f", suffix=".glb")
    with pytest.raises(ValidationError, match="must be a file name"):
        check_file_name(3, "f")


@pytest.mark.parametrize("job_id", ["../../etc", "a/b", "..", "x\x00y"])
def test_a_job_id_that_is_not_a_plain_name_does_not_decode(job_id):
    for message in (m.Cancel(job_id=job_id), m.Attach(job_id=job_id), m.FetchResult(job_id=job_id)):
        with pytest.raises(ValidationError, match="header field 'job'"):
            codec.decode(codec.encode(message))
    assert codec.decode(codec.encode(m.Cancel(job_id="20261201-124200-a1b2c3"))).job_id == "20261201-124200-a1b2c3"
