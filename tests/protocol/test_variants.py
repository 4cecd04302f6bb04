"""Seed variants of one request (protocol.job.variant_specs)."""

from __future__ import annotations

import pytest
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import MAX_VARIANTS, SEED_LIMIT, JobSpec, validate_spec, variant_specs


def test_variants_differ_only_in_seed_and_pause_after_the_chosen_stage():
    spec = JobSpec("a lamp", seed=7, pause_after=["nerf"], options={"nerf.steps": 4})
    variants = variant_specs(spec, 3, "dmtet")
    assert [v.seed for v in variants] == [7, 8, 9]
    assert all(v.pause_after == ["nerf", "dmtet"] for v in variants)
    assert all(v.prompt == "a lamp" and v.options == {"nerf.steps": 4} for v in variants)
    for v in variants:
        validate_spec(v)
    variants[0].options["nerf.steps"] = 9  # each variant owns its containers
    assert spec.options == {"nerf.steps": 4} and variants[1].options == {"nerf.steps": 4}
    assert spec.pause_after == ["nerf"]


def test_seeds_wrap_below_the_seed_limit():
    assert [v.seed for v in variant_specs(JobSpec("x", seed=SEED_LIMIT - 1), 2, "neus")] == [SEED_LIMIT - 1, 0]


@pytest.mark.parametrize("count", [0, MAX_VARIANTS + 1, True, 2.0])
def test_a_bad_variant_count_is_refused(count):
    with pytest.raises(ValidationError, match="variants must be an integer"):
        variant_specs(JobSpec("x"), count, "dmtet")


def test_up_to_must_be_a_stage_name():
    # Which stages exist is the backend's to say (welcome.stage_chains; it refuses one its chain lacks).
    with pytest.raises(ValidationError, match="up_to: 'Carve it' is not a stage name"):
        variant_specs(JobSpec("x"), 2, "Carve it")
