"""list_jobs replies stay under the message limit however many jobs and however long their prompts:
pages of at most LISTING_PAGE rows, prompt and error cut in listings, page tokens checked."""

from __future__ import annotations

import pytest
from dreampolish.backend.jobs import LISTING_PAGE, LISTING_TEXT_CHARS
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.limits import LIMITS
from dreampolish.protocol.payloads import JobInfo

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


def test_the_fullest_page_fits_the_header_limit():
    wide = "\U0001f600" * LISTING_TEXT_CHARS  # 4 bytes a character in UTF-8
    row = JobInfo("20261201-000000-abcdef", "failed", wide, preset="x" * 64, stages_done=["reference", "nerf", "neus", "dmtet", "polish", "texture", "export"],
                    error=wide, created_unix=1.0, last_seq=10**9)
    header = codec.encode(m.JobList(jobs=[row] * LISTING_PAGE, next_page="1.0/" + "x" * 64))[0]
    assert len(header) < LIMITS.max_header_bytes / 2, len(header)


def test_pages_cut_long_text_and_refuse_a_made_up_token(tmp_path):
    with running_backend(tmp_path / "store") as server:
        with BackendClient(server.endpoint, timeout_s=10) as c:
            c.connect()
            jobs = [c.submit(JobSpec("\U0001f600" * LIMITS.max_prompt_chars, stages=["nerf"])) for _ in range(5)]
            first, token = c.list_jobs_page(limit=2)
            second, token2 = c.list_jobs_page(token, limit=2)
            third, end = c.list_jobs_page(token2, limit=2)
            assert [j.job_id for j in first + second + third] == jobs and end == ""
            assert all(len(j.prompt) == LISTING_TEXT_CHARS for j in first + second + third)
            for bad in ("nonsense", "x/y"):
                with pytest.raises(RequestRejected) as info:
                    c.list_jobs_page(bad)
                assert info.value.code == "invalid_message"
            c.wait(jobs[-1], timeout_s=30)
            c.delete(jobs[0])  # a deleted row does not break a token that points past it
            rest, _ = c.list_jobs_page(token)
            assert [j.job_id for j in rest] == jobs[2:]


def test_cli_deletes_a_finished_job(tmp_path, capsys):
    from dreampolish.protocol import cli

    with running_backend(tmp_path / "store") as server:
        with BackendClient(server.endpoint, timeout_s=10) as c:
            c.connect()
            job = c.submit(JobSpec("to delete", stages=["nerf"]))
            c.wait(job, timeout_s=30)
        assert cli.main(["delete", job, "--backend", server.endpoint]) == 0
        assert f"job {job} deleted" in capsys.readouterr().out
        assert server.manager.jobs == {} and not (tmp_path / "store" / job).exists()
        assert cli.main(["delete", job, "--backend", server.endpoint]) == 2
        assert "unknown_job" in capsys.readouterr().err
